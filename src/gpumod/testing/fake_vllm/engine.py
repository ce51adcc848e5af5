"""The engine model: what vLLM does before its port opens, and the state it serves from.

Startup checks (device, utilization against free memory, KV pool, context) fail with
vLLM's own messages; memory is registered in the fake nvidia-smi state per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.fake_vllm.args import build_defaults
from gpumod.testing.fake_vllm.common import (
    PROCESS_NAME,
    SLEEP_TAGS,
    GiB,
    StartupError,
    elog,
    env_float,
    exception_line,
    log,
    version,
)

if TYPE_CHECKING:
    from gpumod.testing.fake_vllm.ray_cluster import RayWorkers


@dataclass
class Engine:
    args: argparse.Namespace
    model: str
    served_names: list[str]
    api_key: str | None
    dev_mode: bool
    state_path: str | None
    gpu_uuids: list[str]
    per_gpu_mib: int
    weights_mib: int
    residual_mib: int
    max_model_len: int
    kv_tokens: int
    script: list[dict[str, Any]] = field(default_factory=list)
    workers: RayWorkers | None = None     # --distributed-executor-backend ray
    # runtime
    sleeping: bool = False
    sleep_level: int = 0
    awake_tags: set[str] = field(default_factory=lambda: set(SLEEP_TAGS))
    weights_valid: bool = True
    chat_count: int = 0
    running: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    successes: dict[str, int] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    # -- memory as nvidia-smi shows it
    def _set_memory(self, mib: int) -> None:
        if self.workers is not None:
            self.workers.set_memory(mib)
        elif self.state_path and self.gpu_uuids:
            smi.update_process(self.state_path, os.getpid(), mib, self.gpu_uuids)

    def current_mib(self) -> int:
        if not self.sleeping and self.awake_tags == set(SLEEP_TAGS):
            return self.per_gpu_mib
        mib = self.residual_mib
        if "weights" in self.awake_tags:
            mib += self.weights_mib
        if "kv_cache" in self.awake_tags:
            mib += max(self.per_gpu_mib - self.residual_mib - self.weights_mib, 0)
        return min(mib, self.per_gpu_mib)

    def sleep(self, level: int) -> None:
        t0 = time.monotonic()
        before = self.current_mib()
        keeps = os.environ.get("FAKE_VLLM_SLEEP_KEEPS_MEMORY") == "1"
        self.sleeping = True
        self.sleep_level = level
        self.awake_tags = set()
        if level >= 2:
            self.weights_valid = False
        after = before if keeps else self.current_mib()
        self._set_memory(after)
        elog(f"Sleep mode freed {(before - after) / 1024:.2f} GiB memory, "
             f"{after / 1024:.2f} GiB memory is still in use.", "gpu_worker.py:117")
        elog(f"It took {time.monotonic() - t0 + 0.05:.6f} seconds to fall asleep.",
             "executor_base.py:187")

    def wake_up(self, tags: list[str] | None) -> None:
        t0 = time.monotonic()
        wanted = set(tags) if tags else set(SLEEP_TAGS)
        self.awake_tags |= wanted
        if self.awake_tags == set(SLEEP_TAGS):
            self.sleeping = False
            self.sleep_level = 0
        self._set_memory(self.current_mib())
        elog(f"It took {time.monotonic() - t0 + 0.02:.6f} seconds to wake up tags "
             f"{sorted(wanted) if tags else list(SLEEP_TAGS)}.", "executor_base.py:203")


def visible_gpus(state: dict[str, Any]) -> list[dict[str, Any]]:
    gpus = sorted(state["gpus"], key=lambda g: int(g["index"]))
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return gpus
    chosen = []
    for raw in cvd.split(","):
        key = raw.strip()
        if not key:
            continue
        match = [g for g in gpus if str(g["index"]) == key or g["uuid"] == key]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.append(match[0])
    return chosen


def start_engine(args: argparse.Namespace) -> Engine:
    """Everything vLLM does before the port opens. Raises StartupError."""
    model = args.model_tag or args.model
    if not model:
        raise StartupError("ValueError: No model specified: pass MODEL or --model.")
    served = list(args.served_model_name or [model])
    api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    dev_mode = bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))  # as vllm/envs.py
    util = args.gpu_memory_utilization
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise StartupError("TypeError: Error: --enable-auto-tool-choice requires "
                           "--tool-call-parser")
    non_default = {k: v for k, v in sorted(vars(args).items())
                   if k not in {"command", "model_tag", "api_key"}
                   and v not in (None, False) and v != build_defaults().get(k)}
    log(f"vLLM API server version {version()}", "api_server.py:1805")
    log(f"non-default args: {non_default}", "utils.py:328")
    if not 0 < util <= 1:
        raise StartupError(f"ValueError: GPU memory utilization must be within (0, 1]. "
                           f"Got {util}.")

    tp, pp, dp = args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size
    world = tp * pp
    state_path = os.environ.get(smi.STATE_ENV)
    if not state_path or not os.path.exists(state_path):
        raise StartupError("RuntimeError: Failed to infer device type, please set the "
                           "environment variable `VLLM_LOGGING_LEVEL=DEBUG` to turn on "
                           "verbose logging to help debug the issue.")
    state = smi.read_state(state_path)
    visible = visible_gpus(state)
    if not visible:
        raise StartupError("RuntimeError: Failed to infer device type, please set the "
                           "environment variable `VLLM_LOGGING_LEVEL=DEBUG` to turn on "
                           "verbose logging to help debug the issue.")
    ray_backend = args.distributed_executor_backend == "ray"
    if world * dp > len(visible) and not ray_backend:
        raise StartupError(
            f"ValueError: World size ({world * dp}) is larger than the number of available "
            f"GPUs ({len(visible)}) in this node. If this is intentional and you are using:\n"
            "- ray, set '--distributed-executor-backend ray'.\n"
            "- multiprocessing, set '--nnodes' appropriately.")
    used = visible[: world * dp]

    elog(f"Initializing a V1 LLM engine (v{version()}) with config: model={model!r}, "
         f"tokenizer={args.tokenizer or model!r}, dtype={args.dtype}, "
         f"max_seq_len={args.max_model_len or 'auto'}, tensor_parallel_size={tp}, "
         f"pipeline_parallel_size={pp}, data_parallel_size={dp}, "
         f"quantization={args.quantization}, enforce_eager={args.enforce_eager}, "
         f"kv_cache_dtype={args.kv_cache_dtype}, seed={args.seed}, "
         f"served_model_name={served[0]}, enable_prefix_caching="
         f"{args.enable_prefix_caching is not False}", "core.py:77")

    workers: RayWorkers | None = None
    if ray_backend:  # the workers check their own devices, wherever Ray placed them
        from gpumod.testing.fake_vllm.ray_cluster import start_workers

        workers = start_workers(world * dp, util)
        used = []
    # The startup check, per device: util × total must be free now.
    usage = {g["uuid"]: g for g in smi.gpu_memory(state)}
    for local, g in enumerate(used):
        info = usage[g["uuid"]]
        total_gib = int(info["memory_total_mib"]) / 1024
        free_gib = int(info["free_mib"]) / 1024
        if free_gib < util * total_gib:
            raise StartupError(
                f"ValueError: Free memory on device cuda:{local} ({free_gib:.2f}/"
                f"{total_gib:.2f} GiB) on startup is less than desired GPU memory utilization "
                f"({util}, {util * total_gib:.2f} GiB). Decrease GPU memory utilization or "
                "reduce GPU memory used by other processes.")

    total_mib = workers.total_mib if workers else min(int(g["memory_total_mib"]) for g in used)
    total_gib = total_mib / 1024
    weights_gib = env_float("FAKE_VLLM_WEIGHTS_GIB", 1.0) / world
    overhead_gib = env_float("FAKE_VLLM_OVERHEAD_GIB", 1.0)
    graph_gib = 0.0 if args.enforce_eager else env_float("FAKE_VLLM_GRAPH_GIB", 0.25)
    if args.kv_cache_memory_bytes is not None:
        kv_gib = args.kv_cache_memory_bytes / GiB
        per_gpu_mib = int((weights_gib + overhead_gib + graph_gib + kv_gib) * 1024)
    else:
        kv_gib = util * total_gib - weights_gib - overhead_gib - graph_gib
        per_gpu_mib = int(util * total_mib)
    residual = int(env_float("FAKE_VLLM_SLEEP_RESIDUAL_MIB", 512))

    uuids = [g["uuid"] for g in used]

    def hold(mib: int) -> None:  # what nvidia-smi shows per GPU, wherever the GPUs are
        if workers is not None:
            workers.set_memory(mib)
        else:
            smi.update_process(state_path, os.getpid(), mib, uuids)

    if workers is None:
        smi.register_process(state_path, os.getpid(), PROCESS_NAME, uuids,
                             min(residual, per_gpu_mib))
    else:
        hold(min(residual, per_gpu_mib))
    t0 = time.monotonic()
    elog(f"Starting to load model {model}...", "gpu_model_runner.py:2338")
    time.sleep(max(env_float("FAKE_VLLM_STARTUP_SECONDS", 0.5), 0))
    fail = os.environ.get("FAKE_VLLM_FAIL")
    if fail:
        raise StartupError(exception_line(fail))
    hold(int(min(residual + weights_gib * 1024, per_gpu_mib)))
    load_s = time.monotonic() - t0
    elog(f"Model loading took {weights_gib:.4f} GiB and {load_s:.6f} seconds",
         "gpu_model_runner.py:2370")
    if kv_gib <= 0:
        raise StartupError("ValueError: No available memory for the cache blocks. Try "
                           "increasing `gpu_memory_utilization` when initializing the engine.")
    elog(f"Available KV cache memory: {kv_gib:.2f} GiB", "gpu_worker.py:298")

    per_token = env_float("FAKE_VLLM_KV_BYTES_PER_TOKEN", 131072)
    if args.kv_cache_dtype.startswith("fp8"):
        per_token /= 2
    per_token_gpu = per_token / world
    kv_tokens = int(kv_gib * GiB / per_token_gpu) // 16 * 16
    max_len = args.max_model_len or int(env_float("FAKE_VLLM_MAX_MODEL_LEN", 32768))
    if max_len > kv_tokens:
        needed = max_len * per_token_gpu / GiB
        raise StartupError(
            f"ValueError: To serve at least one request with the models's max seq len "
            f"({max_len}), ({needed:.2f} GiB KV cache is needed, which is larger than the "
            f"available KV cache memory ({kv_gib:.2f} GiB). Based on the available memory, the "
            f"estimated maximum model length is {kv_tokens}. Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
            "engine.")
    elog(f"GPU KV cache size: {kv_tokens:,} tokens", "kv_cache_utils.py:1087")
    elog(f"Maximum concurrency for {max_len:,} tokens per request: "
         f"{kv_tokens / max_len:.2f}x", "kv_cache_utils.py:1091")
    if not args.enforce_eager:
        elog(f"Graph capturing finished in {max(1, round(load_s))} secs, took "
             f"{graph_gib:.2f} GiB", "gpu_model_runner.py:3480")
    hold(per_gpu_mib)
    elog(f"init engine (profile, create kv cache, warmup model) took "
         f"{time.monotonic() - t0:.2f} seconds", "core.py:210")

    script: list[dict[str, Any]] = []
    script_path = os.environ.get("FAKE_VLLM_SCRIPT")
    if script_path:
        with open(script_path, encoding="utf-8") as fh:
            script = json.load(fh)
        if not isinstance(script, list) or not all(isinstance(t, dict) for t in script):
            raise StartupError("ValueError: FAKE_VLLM_SCRIPT must hold a JSON list of turns")
    if args.enable_sleep_mode and not dev_mode:
        log("Sleep mode is enabled, but VLLM_SERVER_DEV_MODE is not set: the /sleep and "
            "/wake_up endpoints are not served.", "api_server.py:1700", level="WARNING")
    if dev_mode:
        log("SECURITY WARNING: Development endpoints are enabled! This should NOT be used "
            "in production!", "api_server.py:1718", level="WARNING")
    return Engine(args=args, model=model, served_names=served, api_key=api_key,
                  dev_mode=dev_mode, state_path=state_path, gpu_uuids=uuids,
                  per_gpu_mib=per_gpu_mib, weights_mib=int(weights_gib * 1024),
                  residual_mib=min(residual, per_gpu_mib), max_model_len=max_len,
                  kv_tokens=kv_tokens, script=script, workers=workers)
