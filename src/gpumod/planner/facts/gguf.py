"""Facts from a GGUF file: header and tensor sizes via the ``gguf`` package.

Split files (``-00001-of-0000N.gguf``) are summed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpumod.errors import ConfigError, NotFoundError
from gpumod.planner.facts.config import estimate_param_count
from gpumod.planner.facts.model import FULL, SLIDING, ModelFacts

_SPLIT = re.compile(r"(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf")


def gguf_split_files(path: Path) -> list[Path]:
    """All parts of a split GGUF (given any part), else just the file."""
    m = _SPLIT.fullmatch(path.name)
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
    except (ValueError, TypeError, IndexError, UnicodeDecodeError):
        return None   # a field of a type this gguf package cannot decode: treat as absent


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
    facts.tie_embeddings = output == 0          # no output.weight: the head reuses token_embd
    facts.weight_bytes, facts.weight_bytes_source = total, "GGUF tensor sizes"
    facts.files = {p.name: p.stat().st_size for p in parts}
    facts.param_count = estimate_param_count(facts)
    facts.param_count_source = "config"
    if len(parts) > 1:
        facts.notes.append(f"split GGUF: {len(parts)} files summed")
    return facts


# Average bits per weight of common llama.cpp file types (llama.cpp's quantize table).
GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69,
             "Q5_K_S": 5.54, "Q5_0": 5.5, "Q5_1": 6, "Q4_K_M": 4.89, "Q4_K_S": 4.58,
             "Q4_0": 4.5, "Q4_1": 5, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5,
             "Q2_K": 3.35, "IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_M": 3.66, "IQ3_XXS": 3.06,
             "IQ2_M": 2.7, "IQ2_XXS": 2.06, "MXFP4": 4.25}


def gguf_bits(level: str) -> float:
    return float(GGUF_BITS.get(level.upper(), 16))
