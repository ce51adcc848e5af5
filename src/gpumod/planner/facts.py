"""Model facts: what the planner needs to know about a model, from wherever it lives.

Sources, each turned into one :class:`ModelFacts`:

- a Hugging Face id (``config.json`` plus the Hub's file list and safetensors
  parameter counts, through ``huggingface_hub``), cached in the store table
  ``model_facts`` so that later runs work offline;
- a local folder (``config.json`` plus ``model.safetensors.index.json``'s
  ``metadata.total_size``, else the safetensors headers);
- a GGUF file (header and tensor sizes via the ``gguf`` package; split files
  ``-00001-of-0000N.gguf`` are summed);
- Ollama's ``/api/show`` answer (its ``model_info``).

Nested configs (``text_config``), ``head_dim``, sliding windows and layer
types (sliding / full / linear / mamba), MLA (``kv_lora_rank``,
``qk_rope_head_dim``), MoE and quantization configs are all read.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gpumod.errors import ConfigError, NotFoundError, TransportError, UsageError

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


# ---------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------

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
    period = cfg.get("attn_layer_period")             # Jamba
    if period:
        offset = int(cfg.get("attn_layer_offset") or 0)
        return [FULL if i % int(period) == offset else MAMBA for i in range(n_layers)], 0
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
    dense_mlp = 3 * h * f.intermediate_size
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


# ---------------------------------------------------------------------------
# Local folder: config.json + safetensors
# ---------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length + JSON)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ConfigError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length <= 0 or length > 100 * 1024 * 1024:
            raise ConfigError(f"{path}: not a safetensors file (header length {length})")
        data = fh.read(length)
    try:
        header = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: safetensors header is not a JSON object")
    return header


def safetensors_bytes(header: dict[str, Any]) -> tuple[int, int]:
    """(tensor bytes, parameter count) from one safetensors header."""
    total = params = 0
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        offsets = info.get("data_offsets") or [0, 0]
        total += int(offsets[1]) - int(offsets[0])
        n = 1
        for dim in info.get("shape") or []:
            n *= int(dim)
        params += n
    return total, params


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


def facts_from_folder(folder: Path) -> ModelFacts:
    folder = folder.expanduser().resolve()
    config_path = folder / "config.json"
    if not config_path.is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            return facts_from_gguf(ggufs[0])
        raise NotFoundError(f"{folder}: no config.json",
                            hint="a model folder needs config.json (transformers format) "
                                 "or a .gguf file")
    facts = facts_from_config(_load_json(config_path), key=str(folder), source="local")
    index_path = folder / "model.safetensors.index.json"
    shards = sorted(folder.glob("*.safetensors"))
    facts.files = {p.name: p.stat().st_size for p in shards}
    if index_path.is_file():
        index = _load_json(index_path)
        total = (index.get("metadata") or {}).get("total_size") if isinstance(index, dict) else None
        if total:
            facts.weight_bytes = int(total)
            facts.weight_bytes_source = "safetensors index metadata.total_size"
    if not facts.weight_bytes and shards:
        total = params = 0
        for shard in shards:
            b, p = safetensors_bytes(read_safetensors_header(shard))
            total += b
            params += p
        facts.weight_bytes, facts.weight_bytes_source = total, "safetensors headers"
        facts.param_count, facts.param_count_source = params, "safetensors headers"
    if not facts.weight_bytes:
        facts.notes.append("no safetensors weights found: size estimated from config.json")
    return facts


# ---------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


def gguf_split_files(path: Path) -> list[Path]:
    """All parts of a split GGUF (given any part), else just the file."""
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    n = int(m.group("n"))
    parts = [path.with_name(f"{m.group('stem')}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise NotFoundError(f"{path.name}: split GGUF is missing {', '.join(missing)}",
                            hint="download every part of the model into the same folder")
    return parts


def _field(reader: Any, name: str) -> Any:
    f = reader.fields.get(name)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def facts_from_gguf(path: Path) -> ModelFacts:
    import gguf  # imported lazily: numpy is slow to import

    path = path.expanduser().resolve()
    if not path.is_file():
        raise NotFoundError(f"{path}: no such GGUF file")
    parts = gguf_split_files(path)
    layer_bytes: dict[int, int] = {}
    other = output = embd = total = 0
    meta: dict[str, Any] = {}
    file_type = ""
    for part in parts:
        try:
            reader = gguf.GGUFReader(str(part), "r")
        except Exception as exc:
            raise ConfigError(f"{part.name}: not a readable GGUF file ({exc})") from exc
        if not meta:
            arch = _field(reader, "general.architecture") or ""
            meta["arch"] = arch
            for key in ("block_count", "context_length", "embedding_length",
                        "feed_forward_length", "attention.head_count", "attention.head_count_kv",
                        "attention.key_length", "attention.value_length",
                        "attention.sliding_window", "expert_count", "expert_used_count",
                        "attention.kv_lora_rank", "rope.dimension_count", "vocab_size",
                        "expert_feed_forward_length", "ssm.state_size", "ssm.inner_size"):
                meta[key] = _field(reader, f"{arch}.{key}")
            meta["name"] = _field(reader, "general.name")
            ft = _field(reader, "general.file_type")
            if ft is not None:
                try:
                    file_type = gguf.LlamaFileType(int(ft)).name.replace("MOSTLY_", "")
                except ValueError:
                    file_type = str(ft)
            tokens = reader.fields.get("tokenizer.ggml.tokens")
            meta["n_vocab"] = len(tokens.data) if tokens is not None else None
        for tensor in reader.tensors:
            n = int(tensor.n_bytes)
            total += n
            m = re.match(r"^blk\.(\d+)\.", tensor.name)
            if m:
                layer_bytes[int(m.group(1))] = layer_bytes.get(int(m.group(1)), 0) + n
            elif tensor.name.startswith("token_embd"):
                embd += n
            elif tensor.name.startswith("output."):
                output += n
            else:
                other += n
    def num(key: str, default: int = 0) -> int:
        value = meta.get(key)
        if isinstance(value, list):   # per-layer arrays (e.g. head_count_kv)
            value = max(value) if value else None
        return int(value) if value is not None else default

    n_layers = num("block_count", len(layer_bytes))
    hidden = num("embedding_length")
    heads = num("attention.head_count")
    if not n_layers or not hidden or not heads:
        raise ConfigError(f"{path.name}: GGUF header lacks block_count/embedding_length/"
                          "head_count", hint="is this a language model GGUF?")
    facts = ModelFacts(key=str(path), source="gguf")
    facts.architecture = str(meta.get("arch") or "")
    facts.model_type = facts.architecture
    facts.num_layers, facts.hidden_size, facts.num_heads = n_layers, hidden, heads
    facts.num_kv_heads = num("attention.head_count_kv", heads)
    facts.head_dim = num("attention.key_length", hidden // heads)
    facts.v_head_dim = num("attention.value_length", facts.head_dim)
    facts.intermediate_size = num("feed_forward_length", 4 * hidden)
    facts.max_position = num("context_length")
    facts.vocab_size = num("vocab_size") or int(meta.get("n_vocab") or 0)
    facts.num_experts = num("expert_count")
    facts.experts_per_token = num("expert_used_count")
    facts.moe_intermediate_size = num("expert_feed_forward_length")
    if num("attention.kv_lora_rank"):
        facts.attention = "mla"
        facts.kv_lora_rank = num("attention.kv_lora_rank")
        facts.qk_rope_head_dim = num("rope.dimension_count", 64)
    window = num("attention.sliding_window")
    if window:
        facts.sliding_window = window
        if facts.architecture == "gemma2":
            facts.layer_types = [SLIDING if i % 2 == 0 else FULL for i in range(n_layers)]
        elif facts.architecture == "gemma3":
            facts.layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n_layers)]
        elif facts.architecture in ("gpt-oss", "gptoss"):
            facts.layer_types = [SLIDING if i % 2 == 0 else FULL for i in range(n_layers)]
    facts.dtype = "float16"
    facts.quant_method = "gguf"
    facts.gguf_file_type = file_type
    facts.gguf_files = [str(p) for p in parts]
    facts.gguf_layer_bytes = [layer_bytes.get(i, 0) for i in range(n_layers)]
    facts.gguf_other_bytes, facts.gguf_output_bytes, facts.gguf_embd_bytes = other, output, embd
    facts.weight_bytes, facts.weight_bytes_source = total, "GGUF tensor sizes"
    facts.files = {p.name: p.stat().st_size for p in parts}
    facts.param_count = estimate_param_count(facts)
    facts.param_count_source = "config"
    if len(parts) > 1:
        facts.notes.append(f"split GGUF: {len(parts)} files summed")
    return facts


# ---------------------------------------------------------------------------
# Ollama /api/show
# ---------------------------------------------------------------------------

def facts_from_ollama_show(name: str, answer: dict[str, Any]) -> ModelFacts:
    """Facts from Ollama's ``POST /api/show {"model": name}`` answer."""
    info = answer.get("model_info") if isinstance(answer, dict) else None
    if not isinstance(info, dict) or not info:
        raise ConfigError(f"ollama {name}: /api/show gave no model_info",
                          hint="is this an Ollama model? `ollama show NAME` should list it")
    arch = str(info.get("general.architecture") or "")

    def get(key: str, default: int = 0) -> int:
        value = info.get(f"{arch}.{key}")
        if isinstance(value, list):
            value = max(value) if value else None
        return int(value) if value is not None else default

    facts = ModelFacts(key=f"ollama:{name}", source="ollama")
    facts.architecture = facts.model_type = arch
    facts.num_layers = get("block_count")
    facts.hidden_size = get("embedding_length")
    facts.num_heads = get("attention.head_count")
    if not (facts.num_layers and facts.hidden_size and facts.num_heads):
        raise ConfigError(f"ollama {name}: model_info lacks block_count/embedding_length/"
                          "head_count")
    facts.num_kv_heads = get("attention.head_count_kv", facts.num_heads)
    facts.head_dim = get("attention.key_length", facts.hidden_size // facts.num_heads)
    facts.intermediate_size = get("feed_forward_length", 4 * facts.hidden_size)
    facts.max_position = get("context_length")
    facts.vocab_size = get("vocab_size")
    facts.num_experts = get("expert_count")
    facts.experts_per_token = get("expert_used_count")
    facts.sliding_window = get("attention.sliding_window")
    if facts.sliding_window and arch == "gemma2":
        facts.layer_types = [SLIDING if i % 2 == 0 else FULL for i in range(facts.num_layers)]
    elif facts.sliding_window and arch == "gemma3":
        facts.layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING
                             for i in range(facts.num_layers)]
    params = info.get("general.parameter_count")
    details = answer.get("details") or {}
    level = str(details.get("quantization_level") or "")
    facts.quant_method, facts.gguf_file_type = "gguf", level
    facts.dtype = "float16"
    if params:
        facts.param_count, facts.param_count_source = int(params), "ollama model_info"
        bits = _gguf_bits(level)
        facts.weight_bytes = int(int(params) * bits / 8)
        facts.weight_bytes_source = f"parameter_count x {bits} bits ({level or 'unknown type'})"
    else:
        facts.param_count = estimate_param_count(facts)
        facts.param_count_source = "config"
    return facts


# Average bits per weight of common llama.cpp file types (llama.cpp's quantize table).
GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69,
             "Q5_K_S": 5.54, "Q5_0": 5.5, "Q5_1": 6, "Q4_K_M": 4.89, "Q4_K_S": 4.58,
             "Q4_0": 4.5, "Q4_1": 5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5,
             "Q2_K": 3.35, "IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_M": 3.66, "IQ3_XXS": 3.06,
             "IQ2_M": 2.7, "IQ2_XXS": 2.06, "MXFP4": 4.25}


def _gguf_bits(level: str) -> float:
    return float(GGUF_BITS.get(level.upper(), 16))


# ---------------------------------------------------------------------------
# Hugging Face Hub
# ---------------------------------------------------------------------------

class HubClient:
    """Reads a repo's config.json and file metadata through huggingface_hub.

    ``huggingface_hub`` honours ``HF_TOKEN``/``HF_ENDPOINT``; tests inject an
    httpx transport with ``huggingface_hub.set_client_factory``.
    """

    def model_info(self, repo: str) -> dict[str, Any]:
        from huggingface_hub import HfApi

        info = _hub_call(repo, lambda: HfApi().model_info(repo, files_metadata=True))
        siblings = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
        st = info.safetensors
        return {
            "id": info.id,
            "siblings": siblings,
            "safetensors": ({"parameters": dict(st.parameters or {}), "total": st.total}
                            if st else None),
            "gated": getattr(info, "gated", None),
            "pipeline_tag": info.pipeline_tag,
        }

    def file_json(self, repo: str, filename: str) -> Any:
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

        def fetch() -> Any:
            response = get_session().get(hf_hub_url(repo, filename), headers=build_hf_headers(),
                                         follow_redirects=True, timeout=30)
            hf_raise_for_status(response)
            return response.json()

        return _hub_call(repo, fetch, filename=filename)

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        from huggingface_hub import HfApi

        models = _hub_call(query, lambda: list(HfApi().list_models(search=query, limit=limit,
                                                                   sort="downloads")))
        return [{"id": m.id, "downloads": m.downloads, "likes": m.likes,
                 "pipeline_tag": m.pipeline_tag, "library": m.library_name} for m in models]


def _http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(HTTPStatusError classes, HTTPError classes) of httpx and of httpx2.

    huggingface_hub >= 1.x talks through `httpx2` (a separate package whose exceptions
    are not httpx's); tests and older hubs use `httpx`. Both must map to typed errors.
    """
    import importlib

    status: list[type[BaseException]] = []
    other: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        status.append(module.HTTPStatusError)
        other.append(module.HTTPError)
    return tuple(status), tuple(other)


def _hub_call(repo: str, call: Callable[[], Any], filename: str | None = None) -> Any:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    what = f"{repo}/{filename}" if filename else repo
    status_errors, http_errors = _http_errors()
    try:
        return call()
    except GatedRepoError as exc:
        raise UsageError(f"{repo} is gated on Hugging Face",
                         hint="accept its licence on huggingface.co and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise NotFoundError(f"no model {repo!r} on Hugging Face",
                            hint="check the id (owner/name); private models need HF_TOKEN; "
                                 "`gpumod model search WORDS` finds ids") from exc
    except EntryNotFoundError as exc:
        raise NotFoundError(f"{what} not found on Hugging Face") from exc
    except OfflineModeIsEnabled as exc:
        raise TransportError("Hugging Face is unreachable: HF_HUB_OFFLINE is set",
                             hint="unset HF_HUB_OFFLINE, or give a local model folder or GGUF"
                             ) from exc
    except (HfHubHTTPError, *status_errors) as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404 and not filename:
            raise NotFoundError(f"no model {repo!r} on Hugging Face",
                                hint="check the id (owner/name); private models need HF_TOKEN; "
                                     "`gpumod model search WORDS` finds ids") from exc
        if status == 404:
            raise NotFoundError(f"{what} not found on Hugging Face") from exc
        if status in (401, 403):
            raise UsageError(f"Hugging Face refused {what} ({status})",
                             hint="set HF_TOKEN to a token that can read this repo") from exc
        raise TransportError(f"Hugging Face answered {status} for {what}") from exc
    except (*http_errors, OSError) as exc:
        from gpumod.hf_errors import network_cause

        chain = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e)
        cause = network_cause(chain) or type(exc).__name__
        raise TransportError(f"cannot reach Hugging Face for {what}: {cause}",
                             hint="check the network (or HF_ENDPOINT); facts fetched once are "
                                  "cached, and a local folder or GGUF works offline") from exc


def facts_from_hub(repo: str, client: HubClient | None = None) -> ModelFacts:
    client = client or HubClient()
    info = client.model_info(repo)
    siblings: dict[str, int] = info.get("siblings") or {}
    if "config.json" not in siblings:
        ggufs = [n for n in siblings if n.endswith(".gguf")]
        hint = ("this repo holds GGUF files: download one and pass its path"
                if ggufs else "the repo has no config.json")
        raise ConfigError(f"{repo}: no config.json in the repository", hint=hint)
    facts = facts_from_config(client.file_json(repo, "config.json"), key=repo, source="hf")
    facts.files = {n: s for n, s in siblings.items()
                   if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf"))}
    st = info.get("safetensors") or {}
    params: dict[str, int] = st.get("parameters") or {}
    if params:
        facts.param_count = int(sum(params.values()))
        facts.param_count_source = "hub safetensors metadata"
        facts.weight_bytes = int(sum(int(n) * DTYPE_BYTES.get(d, 2) for d, n in params.items()))
        facts.weight_bytes_source = "hub safetensors metadata (parameters per dtype)"
    else:
        shards = sum(s for n, s in siblings.items() if n.endswith(".safetensors"))
        if shards:
            facts.weight_bytes = shards
            facts.weight_bytes_source = "safetensors file sizes"
        else:
            facts.notes.append("no safetensors on the Hub: size estimated from config.json")
    return facts


# ---------------------------------------------------------------------------
# Resolution and caching
# ---------------------------------------------------------------------------

def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or \
        Path(model).expanduser().exists()


def resolve(model: str, *, store: Any = None, hub: HubClient | None = None,
            refresh: bool = False) -> ModelFacts:
    """Facts for MODEL: a local folder or GGUF, ``ollama:NAME`` (cached answer), or an HF id.

    HF facts are cached in ``model_facts``; a cached entry is used unless
    ``refresh``. Local paths are always read fresh (they are cheap and may change).
    """
    from gpumod import validate

    model = model.strip()
    if not model:
        raise UsageError("no model given")
    if looks_like_path(model):
        path = Path(model).expanduser()
        if path.is_dir():
            return facts_from_folder(path)
        if path.suffix == ".gguf" or path.is_file():
            if path.suffix != ".gguf" and path.name == "config.json":
                return facts_from_folder(path.parent)
            return facts_from_gguf(path)
        raise NotFoundError(f"{model}: no such file or folder",
                            hint="give a model folder, a .gguf file or a Hugging Face id")
    if store is not None and not refresh:
        cached = load_cached(store, model)
        if cached is not None:
            return cached
    if model.startswith("ollama:"):
        raise NotFoundError(f"no facts for {model}",
                            hint="record them with `gpumod model info --ollama URL NAME`")
    if not validate.hf_id(model):
        raise UsageError(f"invalid model {model!r}",
                         hint="use a Hugging Face id (owner/name), a folder or a .gguf path")
    facts = facts_from_hub(model, hub)
    if store is not None:
        save_cached(store, facts)
    return facts


def load_cached(store: Any, key: str) -> ModelFacts | None:
    from gpumod.store.db import loads

    row = store.query_one("SELECT facts FROM model_facts WHERE key = ?", (key,))
    if row is None:
        return None
    try:
        return ModelFacts.from_json(loads(row["facts"]))
    except (TypeError, ValueError):
        return None   # an unreadable cache entry is refetched


def save_cached(store: Any, facts: ModelFacts) -> None:
    from gpumod.store.db import dumps

    with store.transaction() as db:
        db.execute(
            "INSERT INTO model_facts (key, facts) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
            "SET facts = excluded.facts, fetched_at = datetime('now')",
            (facts.key, dumps(facts.to_json())))


def fetch_ollama_show(base_url: str, name: str, *, timeout: float = 10,
                      transport: Any = None) -> dict[str, Any]:
    """POST /api/show to an Ollama server (httpx; a transport can be injected for tests)."""
    import httpx

    try:
        with httpx.Client(base_url=base_url, timeout=timeout, transport=transport) as client:
            response = client.post("/api/show", json={"model": name})
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach Ollama at {base_url}: {type(exc).__name__}",
                             hint="is `ollama serve` running? default URL "
                                  "http://127.0.0.1:11434") from exc
    if response.status_code == 404:
        raise NotFoundError(f"Ollama has no model {name!r}", hint=f"`ollama pull {name}`")
    if response.status_code >= 400:
        raise TransportError(f"Ollama answered {response.status_code} for {name}")
    try:
        return response.json()
    except ValueError as exc:
        raise TransportError(f"Ollama's /api/show answer for {name} is not JSON") from exc
