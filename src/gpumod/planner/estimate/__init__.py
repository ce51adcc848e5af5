"""Per-GPU memory estimates for vLLM and llama.cpp, calibrated on real engine logs.

The public calls (stable; other modules and the multi-node planner use them):

- ``vllm_estimate(facts, gpu_mib=.., gpu_name=.., args=VLLMArgs(tp=.., pp=.., ...),
  calibration=..)`` -> :class:`VLLMEstimate`, per GPU of the tightest pipeline stage.
  ``tp`` GPUs per stage split every layer; ``pp`` stages split the layers (a
  two-node Ray deployment of 8 GPUs per node is ``VLLMArgs(tp=8, pp=2)``).
  ``args.version`` is the vLLM version ("0.11.2"); it moves the batch defaults,
  the sampler warm-up and the NCCL overheads.
- ``utilization_for(facts, gpu_mib=.., args=..)``: the smallest
  ``--gpu-memory-utilization`` that serves one max-length sequence.
- ``llamacpp_estimate(facts, gpu_mib=.., args=LlamaCppArgs(..))`` and
  ``llamacpp_max_layers(..)``.
- ``parse_vllm_args(argv)`` / ``parse_llamacpp_args(argv)``: the engines' flags.

Modules: ``common`` (bytes per element, KV per token, weight sizes), ``vllm``,
``vllm_profile`` (what vLLM's profile run costs per version and card), ``llamacpp``.
"""

from gpumod.planner.estimate.common import (
    DEFAULT_VLLM_VERSION,
    KV_CACHE_BYTES,
    dtype_bytes,
    estimate_weight_bytes,
    gib,
    kv_layer_bytes_per_token,
    version_tuple,
)
from gpumod.planner.estimate.llamacpp import (
    LLAMA_CACHE_BYTES,
    LlamaCppArgs,
    LlamaCppEstimate,
    llamacpp_estimate,
    llamacpp_max_layers,
    parse_llamacpp_args,
)
from gpumod.planner.estimate.vllm import (
    VLLMArgs,
    VLLMEstimate,
    default_utilization,
    kv_per_sequence_bytes,
    parse_vllm_args,
    stage_layers,
    utilization_for,
    vllm_estimate,
)
from gpumod.planner.estimate.vllm_profile import (
    DEFAULT_CONSTANTS,
    ProfileConstants,
    non_torch_bytes,
)
from gpumod.units import parse_bytes, parse_tokens

__all__ = [
    "DEFAULT_CONSTANTS", "DEFAULT_VLLM_VERSION", "KV_CACHE_BYTES", "LLAMA_CACHE_BYTES",
    "LlamaCppArgs", "LlamaCppEstimate", "ProfileConstants", "VLLMArgs", "VLLMEstimate",
    "default_utilization", "dtype_bytes", "estimate_weight_bytes", "gib",
    "kv_layer_bytes_per_token", "kv_per_sequence_bytes", "llamacpp_estimate",
    "llamacpp_max_layers", "non_torch_bytes", "parse_bytes", "parse_llamacpp_args",
    "parse_tokens", "parse_vllm_args", "stage_layers", "utilization_for", "version_tuple",
    "vllm_estimate",
]
