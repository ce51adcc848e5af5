"""Facts from a transformers ``config.json``.

Nested configs (``text_config``), ``head_dim``, sliding windows and layer
types (sliding / full / linear / mamba), MLA (``kv_lora_rank``,
``qk_rope_head_dim``), MoE and quantization configs are all read.
"""

from __future__ import annotations

from typing import Any

from gpumod.errors import ConfigError
from gpumod.planner.facts.model import (
    DTYPE_BYTES,
    FULL,
    LINEAR,
    MAMBA,
    NONE,
    SLIDING,
    TEXT_CONFIG_KEYS,
    ModelFacts,
)


def _first(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        value = cfg.get(name)
        if value is not None:
            return value
    return default


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) config."""
    for key in TEXT_CONFIG_KEYS:
        inner = config.get(key)
        if isinstance(inner, dict) and _first(inner, "hidden_size", "num_hidden_layers",
                                               "text_config") is not None:
            if "text_config" in inner and isinstance(inner["text_config"], dict):
                return text_config(inner)
            return inner
    return config


def _layer_types(cfg: dict[str, Any], n_layers: int, model_type: str) -> tuple[list[str], int]:
    """Per-layer attention kind and the sliding window (0: none)."""
    window = int(cfg.get("sliding_window") or 0)
    window_active = False if cfg.get("use_sliding_window") is False else window > 0
    raw = cfg.get("layer_types")
    if isinstance(raw, list) and len(raw) == n_layers:
        mapping = {"full_attention": FULL, "sliding_attention": SLIDING, "attention": FULL,
                   "linear_attention": LINEAR, "mamba": MAMBA, "mamba2": MAMBA,
                   "chunked_attention": SLIDING, "conv": MAMBA, "short_conv": MAMBA}
        types = [mapping.get(str(t), FULL) for t in raw]
        if SLIDING in types and not window:
            window = int(cfg.get("attention_chunk_size") or 0)
        return types, window
    pattern = cfg.get("hybrid_override_pattern")     # NemotronH: M=mamba, *=attention, -=MLP
    if isinstance(pattern, str) and len(pattern) == n_layers:
        return [{"M": MAMBA, "*": FULL}.get(c, NONE) for c in pattern], 0
    if model_type in ("gemma2", "cohere2") and window_active:
        # Gemma 2 alternates: even layers slide, odd layers see everything.
        return [SLIDING if i % 2 == 0 else FULL for i in range(n_layers)], window
    if model_type in ("gemma3_text", "gemma3") and window_active:
        period = int(cfg.get("sliding_window_pattern") or 6)
        return [FULL if (i + 1) % period == 0 else SLIDING for i in range(n_layers)], window
    interval = cfg.get("full_attention_interval")
    if interval and model_type.startswith("qwen3_next"):
        return [FULL if (i + 1) % int(interval) == 0 else LINEAR for i in range(n_layers)], 0
    attn_period = cfg.get("attn_layer_period")        # Jamba
    if attn_period:
        offset = int(cfg.get("attn_layer_offset") or 0)
        return [FULL if i % int(attn_period) == offset else MAMBA for i in range(n_layers)], 0
    if window_active and model_type in ("mistral", "mixtral", "qwen2", "starcoder2", "phi3"):
        max_window_layers = cfg.get("max_window_layers")
        if model_type == "qwen2" and max_window_layers is not None:
            return [SLIDING if i >= int(max_window_layers) else FULL
                    for i in range(n_layers)], window
        if window >= int(cfg.get("max_position_embeddings") or 0) > 0:
            return [FULL] * n_layers, 0     # a window as long as the context changes nothing
        return [SLIDING] * n_layers, window
    return [FULL] * n_layers, 0


def _linear_state_bytes(cfg: dict[str, Any], dtype_bytes: float) -> int:
    """Fixed recurrent state per sequence per linear-attention or mamba layer."""
    # Qwen3-Next gated delta net
    if cfg.get("linear_num_value_heads"):
        vh = int(cfg["linear_num_value_heads"])
        kh = int(cfg.get("linear_num_key_heads") or vh)
        kd = int(cfg.get("linear_key_head_dim") or 128)
        vd = int(cfg.get("linear_value_head_dim") or 128)
        conv = int(cfg.get("linear_conv_kernel_dim") or 4)
        conv_dim = 2 * kh * kd + vh * vd
        return int(vh * kd * vd * 4 + conv_dim * (conv - 1) * dtype_bytes)
    # Mamba / Mamba2
    state = cfg.get("ssm_state_size") or cfg.get("mamba_d_state") or cfg.get("state_size")
    if state:
        hidden = int(cfg.get("hidden_size") or 0)
        expand = float(cfg.get("mamba_expand") or cfg.get("expand") or 2)
        d_inner = int(cfg.get("mamba_d_inner") or (
            int(cfg.get("mamba_num_heads") or 0) * int(cfg.get("mamba_head_dim") or 0))
            or expand * hidden)
        conv = int(cfg.get("mamba_d_conv") or cfg.get("conv_kernel") or 4)
        groups = int(cfg.get("n_groups") or cfg.get("mamba_n_groups") or 1)
        conv_dim = d_inner + 2 * groups * int(state)
        return int(d_inner * int(state) * 4 + conv_dim * (conv - 1) * dtype_bytes)
    return 0


def _quantization(config: dict[str, Any]) -> tuple[str, float]:
    q = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(q, dict):
        return "", 0.0
    method = str(q.get("quant_method") or q.get("quant_type") or "").lower()
    bits = q.get("bits") or q.get("w_bit") or q.get("weight_bits")
    if method in ("fp8", "fbgemm_fp8", "modelopt") and not bits:
        bits = 8
    if method == "mxfp4":
        bits = 4.25
    if method in ("compressed-tensors", "compressed_tensors") and not bits:
        for group in (q.get("config_groups") or {}).values():
            weights = (group or {}).get("weights") or {}
            if weights.get("num_bits"):
                bits = weights["num_bits"]
                break
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8
    return method, float(bits or 0)


def _vision_params(config: dict[str, Any]) -> int:
    vc = config.get("vision_config")
    if not isinstance(vc, dict):
        return 0
    h = int(vc.get("hidden_size") or vc.get("embed_dim") or 0)
    inter = int(vc.get("intermediate_size") or 4 * h)
    layers = int(vc.get("num_hidden_layers") or vc.get("depth") or 0)
    if not h or not layers:
        return 0
    patch = int(vc.get("patch_size") or 14)
    image = int(vc.get("image_size") or 224)
    per_layer = 4 * h * h + 2 * h * inter + 9 * h
    embed = 3 * patch * patch * h + (image // patch) ** 2 * h
    text_h = int(text_config(config).get("hidden_size") or 0)
    projector = h * text_h + 2 * h
    return layers * per_layer + embed + projector


# transformers' defaults for fields that config.json files of these types often omit
MODEL_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"head_dim": 256, "vocab_size": 262208, "max_position_embeddings": 131072,
                    "sliding_window": 4096, "sliding_window_pattern": 6},
    "gemma2": {"head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192},
    "gemma": {"head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192},
    "llama": {"vocab_size": 32000, "max_position_embeddings": 2048},
}


def facts_from_config(config: dict[str, Any], *, key: str, source: str = "config") -> ModelFacts:
    """Read a transformers ``config.json`` (dict). Raises ConfigError if it lacks the basics."""
    if not isinstance(config, dict):
        raise ConfigError(f"{key}: config.json is not a JSON object")
    cfg = text_config(config)
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    if model_type == "gemma3" and cfg is not config:
        model_type = "gemma3_text"
    defaults = MODEL_TYPE_DEFAULTS.get(model_type)
    if defaults:
        cfg = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
    archs = config.get("architectures") or cfg.get("architectures") or []
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model", "dim")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads")
    missing = [name for name, value in (("hidden_size", hidden), ("num_hidden_layers", layers),
                                        ("num_attention_heads", heads)) if not value]
    if missing:
        raise ConfigError(
            f"{key}: config.json lacks {', '.join(missing)}",
            hint="this does not look like a decoder language model; for other models set the "
                 "service's vram budget by hand")
    hidden, layers, heads = int(hidden), int(layers), int(heads)
    kv_heads = int(_first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv",
                          "multi_query_group_num", default=heads))
    if cfg.get("multi_query") is True:
        kv_heads = 1
    head_dim = int(_first(cfg, "head_dim", "attention_head_size", default=0) or hidden // heads)
    dtype = str(_first(cfg, "torch_dtype", "dtype", default=None)
                or config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    dtype = dtype.replace("torch.", "")
    dtype_bytes = DTYPE_BYTES.get(dtype, 2)
    facts = ModelFacts(key=key, source=source)
    facts.architecture = str(archs[0]) if archs else ""
    facts.model_type = model_type
    facts.hidden_size, facts.num_layers, facts.num_heads = hidden, layers, heads
    facts.num_kv_heads, facts.head_dim = kv_heads, head_dim
    facts.intermediate_size = int(_first(cfg, "intermediate_size", "ffn_dim", "n_inner",
                                         default=4 * hidden) or 4 * hidden)
    facts.vocab_size = int(_first(cfg, "vocab_size", "padded_vocab_size", default=0) or 0)
    facts.max_position = int(_first(cfg, "max_position_embeddings", "n_positions",
                                    "max_sequence_length", "seq_length", "n_ctx",
                                    default=0) or 0)
    tie = cfg.get("tie_word_embeddings")
    if tie is None:
        tie = config.get("tie_word_embeddings")
    if tie is None:   # transformers' default is True; Gemma relies on it
        tie = True
    facts.tie_embeddings = bool(tie)
    facts.dtype = dtype
    facts.qkv_bias = bool(cfg.get("attention_bias") or cfg.get("qkv_bias")
                          or model_type in ("qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"))
    # MLA (DeepSeek V2/V3, Kimi K2, ...)
    if cfg.get("kv_lora_rank"):
        facts.attention = "mla"
        facts.kv_lora_rank = int(cfg["kv_lora_rank"])
        facts.qk_rope_head_dim = int(cfg.get("qk_rope_head_dim") or 64)
        facts.qk_nope_head_dim = int(cfg.get("qk_nope_head_dim") or 128)
        facts.v_head_dim = int(cfg.get("v_head_dim") or 128)
        facts.q_lora_rank = int(cfg.get("q_lora_rank") or 0)
    facts.layer_types, facts.sliding_window = _layer_types(cfg, layers, model_type)
    facts.linear_state_bytes = _linear_state_bytes(cfg, dtype_bytes)
    # MoE
    experts = _first(cfg, "num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts",
                     default=0)
    facts.num_experts = int(experts or 0)
    if facts.num_experts > 1:
        facts.experts_per_token = int(_first(cfg, "num_experts_per_tok", "experts_per_token",
                                             "moe_top_k", "top_k", default=2))
        facts.moe_intermediate_size = int(_first(cfg, "moe_intermediate_size",
                                                 default=facts.intermediate_size))
        shared = int(cfg.get("n_shared_experts") or 0) * facts.moe_intermediate_size
        shared = shared or int(cfg.get("shared_expert_intermediate_size") or 0)
        facts.shared_expert_intermediate_size = shared
        facts.first_dense_layers = int(cfg.get("first_k_dense_replace") or 0)
    facts.quant_method, facts.quant_bits = _quantization(config)
    facts.vision_params = _vision_params(config)
    facts.param_count = estimate_param_count(facts)
    facts.param_count_source = "config"
    if config is not cfg:
        facts.notes.append(f"multimodal config: language model read from its {_nested_key(config)}")
    return facts


def _nested_key(config: dict[str, Any]) -> str:
    return next((k for k in TEXT_CONFIG_KEYS if isinstance(config.get(k), dict)), "text_config")


UNGATED_MLP = ("phi", "gpt2", "gptj", "gpt_neox", "gpt_bigcode", "starcoder2", "falcon", "bloom",
               "opt", "mpt")


def estimate_param_count(f: ModelFacts) -> int:
    """Parameters from the architecture (used when no file or metadata gives the size)."""
    h, L = f.hidden_size, f.num_layers
    embed = f.vocab_size * h
    lm_head = 0 if f.tie_embeddings else f.vocab_size * h
    if f.is_mla:
        qk = f.qk_nope_head_dim + f.qk_rope_head_dim
        if f.q_lora_rank:
            q = h * f.q_lora_rank + f.q_lora_rank + f.q_lora_rank * f.num_heads * qk
        else:
            q = h * f.num_heads * qk
        kv = (h * (f.kv_lora_rank + f.qk_rope_head_dim) + f.kv_lora_rank
              + f.kv_lora_rank * f.num_heads * (f.qk_nope_head_dim + f.v_head_dim))
        attn = q + kv + f.num_heads * f.v_head_dim * h
    else:
        q_size, kv_size = f.num_heads * f.head_dim, f.num_kv_heads * f.head_dim
        attn = h * (q_size + 2 * kv_size) + q_size * h
        if f.qkv_bias:
            attn += q_size + 2 * kv_size
    # gated MLPs (SwiGLU/GeGLU) have gate, up and down; the GPT-2 family only fc1 and fc2
    dense_mlp = (2 if f.model_type in UNGATED_MLP else 3) * h * f.intermediate_size
    if f.is_moe:
        moe = (f.num_experts * 3 * h * f.moe_intermediate_size + h * f.num_experts
               + 3 * h * f.shared_expert_intermediate_size)
        n_moe = L - f.first_dense_layers
        mlp_total = n_moe * moe + f.first_dense_layers * dense_mlp
    else:
        mlp_total = L * dense_mlp
    types = f.attention_layer_types()
    attn_layers = sum(1 for t in types if t in (FULL, SLIDING))
    other_layers = L - attn_layers
    # linear/mamba mixers: about the size of an attention block with the same width
    mixer = other_layers * (4 * h * h)
    norms = L * 4 * h + h
    return int(embed + lm_head + attn_layers * attn + mixer + mlp_total + norms + f.vision_params)
