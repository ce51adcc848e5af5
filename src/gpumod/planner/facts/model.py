"""ModelFacts: what the planner needs to know about a model, whatever it was read from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Bytes per element of a safetensors / torch dtype name.
DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F8_E4M3FN": 1, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float": 4, "half": 2,
    "fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "float8_e4m3fn": 1,
}

FULL, SLIDING, LINEAR, MAMBA, NONE = "full", "sliding", "linear", "mamba", "none"

TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config", "thinker_config")


@dataclass
class ModelFacts:
    """Everything the estimators read. Serialised as JSON into ``model_facts``."""

    key: str
    source: str                        # hf | local | gguf | ollama | config
    architecture: str = ""
    model_type: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    max_position: int = 0
    tie_embeddings: bool = False
    dtype: str = "bfloat16"
    # attention shape
    attention: str = "gqa"             # gqa | mla
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    qkv_bias: bool = False
    sliding_window: int = 0
    layer_types: list[str] = field(default_factory=list)   # full/sliding/linear/mamba/none
    linear_state_bytes: int = 0        # fixed state per sequence per linear/mamba layer (bytes)
    # MoE
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    first_dense_layers: int = 0
    # quantization (from quantization_config or GGUF)
    quant_method: str = ""
    quant_bits: float = 0.0
    # multimodal tower (parameters outside the language model)
    vision_params: int = 0
    # sizes
    weight_bytes: int = 0              # exact, from files or metadata (0: unknown)
    weight_bytes_source: str = ""
    param_count: int = 0               # from metadata, else estimated from the config
    param_count_source: str = ""
    # GGUF specifics (llama.cpp)
    gguf_files: list[str] = field(default_factory=list)
    gguf_file_type: str = ""
    gguf_layer_bytes: list[int] = field(default_factory=list)   # per block
    gguf_other_bytes: int = 0          # output/norms/etc. (not per layer, not token_embd)
    gguf_output_bytes: int = 0
    gguf_embd_bytes: int = 0
    files: dict[str, int] = field(default_factory=dict)         # name -> size (bytes)
    notes: list[str] = field(default_factory=list)

    # -- derived ------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def is_mla(self) -> bool:
        return self.attention == "mla"

    def attention_layer_types(self) -> list[str]:
        if self.layer_types and len(self.layer_types) == self.num_layers:
            return list(self.layer_types)
        return [FULL] * self.num_layers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelFacts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """Short form for `model info`."""
        counts: dict[str, int] = {}
        for t in self.attention_layer_types():
            counts[t] = counts.get(t, 0) + 1
        return {
            "key": self.key, "source": self.source, "architecture": self.architecture,
            "model_type": self.model_type, "params": self.param_count,
            "params_source": self.param_count_source,
            "weight_bytes": self.weight_bytes, "weight_gib": round(self.weight_bytes / 2**30, 2),
            "weight_bytes_source": self.weight_bytes_source,
            "dtype": self.dtype, "layers": self.num_layers, "hidden_size": self.hidden_size,
            "heads": self.num_heads, "kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "attention": self.attention, "kv_lora_rank": self.kv_lora_rank or None,
            "qk_rope_head_dim": self.qk_rope_head_dim or None,
            "sliding_window": self.sliding_window or None, "layer_types": counts,
            "experts": self.num_experts or None,
            "experts_per_token": self.experts_per_token or None,
            "quantization": self.quant_method or None, "max_context": self.max_position,
            "vocab_size": self.vocab_size, "notes": self.notes,
        }
