"""What both engines' estimates share: bytes per element, KV per token, weight sizes."""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from typing import Any, ClassVar

from gpumod.planner.facts import DTYPE_BYTES, FULL, LINEAR, MAMBA, SLIDING, ModelFacts
from gpumod.planner.gputable import GIB

DEFAULT_VLLM_VERSION = "0.19"

# vLLM --kv-cache-dtype: bytes per element (None: the model's dtype)
KV_CACHE_BYTES: dict[str, float | None] = {
    "auto": None, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "bfloat16": 2.0,
    "float16": 2.0, "half": 2.0}


def version_tuple(version: str | None) -> tuple[int, int]:
    """(major, minor) of a version string like 'v0.11.2' or '0.19.0rc1'; default 0.19."""
    m = re.match(r"v?(\d+)\.(\d+)", version or DEFAULT_VLLM_VERSION)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 19)


def gib(n: float) -> float:
    return round(n / GIB, 2)


class EstimateResult:
    """What both engines' estimates share: the per-GPU total in MiB and JSON."""

    total_gib: float
    __dataclass_fields__: ClassVar[dict[str, Any]]  # each estimate is a @dataclass (asdict)

    @property
    def total_mib(self) -> int:
        return math.ceil(self.total_gib * 1024)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def dtype_bytes(facts: ModelFacts, dtype: str | None = "auto") -> float:
    name = facts.dtype if dtype in ("auto", "", None) else str(dtype)
    return DTYPE_BYTES.get(name, 2.0)


def kv_heads_per_rank(facts: ModelFacts, tp: int) -> int:
    """KV heads one GPU holds: heads are split, or replicated when tp > kv heads."""
    return max(1, facts.num_kv_heads // tp) if facts.num_kv_heads >= tp else 1


def kv_layer_bytes_per_token(facts: ModelFacts, tp: int, elem_bytes: float) -> float:
    """Bytes one attention layer stores per token on one GPU."""
    if facts.is_mla:   # latent + rope key, replicated on every rank, no K/V pair
        return (facts.kv_lora_rank + facts.qk_rope_head_dim) * elem_bytes
    v_dim = facts.v_head_dim or facts.head_dim
    return kv_heads_per_rank(facts, tp) * (facts.head_dim + v_dim) * elem_bytes


def layer_counts(facts: ModelFacts, layers: list[str] | None = None) -> dict[str, int]:
    counts = {FULL: 0, SLIDING: 0, LINEAR: 0, MAMBA: 0}
    for t in facts.attention_layer_types() if layers is None else layers:
        if t in counts:
            counts[t] += 1
    return counts


def embedding_bytes(facts: ModelFacts, elem_bytes: float) -> int:
    """One vocab x hidden matrix (the input embedding, or the output head)."""
    return int(facts.vocab_size * facts.hidden_size * elem_bytes)


def estimate_weight_bytes(facts: ModelFacts, *, dtype: str | None = "auto",
                          runtime_quant: str | None = None) -> tuple[int, str]:
    """Total weight bytes (all GPUs): exact when files told us, else from the parameter count."""
    wb = dtype_bytes(facts, dtype)
    if facts.weight_bytes and not runtime_quant:
        base = DTYPE_BYTES.get(facts.dtype, 2.0)
        scale = wb / base if dtype not in ("auto", "", None) and not facts.quant_method else 1.0
        return int(facts.weight_bytes * scale), facts.weight_bytes_source
    params = facts.param_count
    embed = facts.vocab_size * facts.hidden_size * (1 if facts.tie_embeddings else 2)
    linear = max(0, params - embed - facts.vision_params)
    method, bits = facts.quant_method, facts.quant_bits
    if runtime_quant in ("fp8", "fbgemm_fp8"):
        method, bits = "fp8", 8.0
    if method == "mxfp4":          # experts in MXFP4, attention/embeddings in bf16
        experts = (facts.num_layers - facts.first_dense_layers) * facts.num_experts * 3 * \
            facts.hidden_size * facts.moe_intermediate_size
        total = experts * bits / 8 + (params - experts) * wb
        return int(total), "estimated from config.json (MXFP4 experts)"
    if bits and method not in ("gguf",):
        # quantized linear layers (+ ~2 % for scales/zero points); embeddings stay 16-bit
        total = linear * bits / 8 * (1.02 if bits < 8 else 1.0) + (embed + facts.vision_params) * wb
        src = "runtime fp8" if runtime_quant else f"{method} {bits:g}-bit"
        return int(total), f"estimated from config.json ({src})"
    return int(params * wb), "estimated from config.json"


def replicated_weight_bytes(facts: ModelFacts, elem_bytes: float) -> int:
    """Parameters every TP rank holds in full (norms, MLA down-projections, routers)."""
    h = facts.hidden_size
    rep = facts.num_layers * 4 * h + h
    if facts.is_mla:
        rep += facts.num_layers * h * (facts.kv_lora_rank + facts.qk_rope_head_dim
                                       + facts.q_lora_rank)
    if facts.is_moe:
        rep += (facts.num_layers - facts.first_dense_layers) * h * facts.num_experts
    return int(rep * elem_bytes)


def rope_cache_bytes(facts: ModelFacts, elem_bytes: float) -> int:
    rot = facts.qk_rope_head_dim if facts.is_mla else facts.head_dim
    return int(max(facts.max_position, 0) * rot * elem_bytes)
