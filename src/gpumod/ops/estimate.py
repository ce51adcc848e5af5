"""`gpumod model estimate`: the CLI's options as the engine's own args, then ops.sizing.

The options become the engine's own args, read by the same parser the MCP tool
and the start check use, so all of them apply a calibration identically; the card
defaults as for MCP (ops.api.model_estimate: the active host's first GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpumod.errors import UsageError
from gpumod.units import parse_tokens


@dataclass
class EstimateRequest:
    model: str
    engine: str = "vllm"
    gpu: str | None = None
    gpu_mib: int | None = None
    tp: int = 1
    pp: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: str | None = None          # tokens as typed: 32768, 32k
    kv_cache_dtype: str = "auto"              # vLLM
    max_num_seqs: int | None = None           # vLLM
    max_num_batched_tokens: int | None = None  # vLLM
    cache_type_k: str = "f16"                 # llama.cpp
    cache_type_v: str = "f16"                 # llama.cpp
    n_gpu_layers: int | None = None           # llama.cpp
    parallel: int = 1                         # llama.cpp
    batch: int | None = None                  # llama.cpp
    ubatch: int | None = None                 # llama.cpp
    version: str | None = None
    refresh: bool = False

    def engine_args(self) -> list[str]:
        length = (parse_tokens(self.max_model_len, what="--max-model-len")
                  if self.max_model_len else None)
        util = self.gpu_memory_utilization
        if self.engine != "vllm":
            argv = ["-c", str(length or 4096), "-ctk", self.cache_type_k, "-ctv",
                    self.cache_type_v, "-np", str(self.parallel)]
            for flag, value in (("-ngl", self.n_gpu_layers), ("-b", self.batch),
                                ("-ub", self.ubatch)):
                if value is not None and (flag == "-ngl" or value):
                    argv += [flag, str(value)]
            return argv
        if util is not None and not 0 < util <= 1:
            raise UsageError(f"--gpu-memory-utilization {util} is outside (0, 1]",
                             hint="a share of the whole card, e.g. 0.9")
        argv = ["--tensor-parallel-size", str(self.tp), "--kv-cache-dtype", self.kv_cache_dtype]
        if self.pp > 1:
            argv += ["--pipeline-parallel-size", str(self.pp)]
        if util is not None:
            argv += ["--gpu-memory-utilization", repr(util)]
        for flag, value in (("--max-model-len", length), ("--max-num-seqs", self.max_num_seqs),
                            ("--max-num-batched-tokens", self.max_num_batched_tokens)):
            if value:
                argv += [flag, str(value)]
        return argv


def estimate(req: EstimateRequest) -> dict[str, Any]:
    from gpumod.ops import api

    return api.model_estimate(req.model, req.engine, gpu=req.gpu, gpu_mib=req.gpu_mib,
                              args=req.engine_args(), vllm_version=req.version,
                              refresh=req.refresh)
