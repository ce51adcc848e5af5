"""Facts from Ollama's ``/api/show`` answer (its ``model_info``)."""

from __future__ import annotations

from typing import Any

from gpumod.errors import ConfigError, NotFoundError, TransportError
from gpumod.planner.facts.config import estimate_param_count
from gpumod.planner.facts.gguf import gguf_bits
from gpumod.planner.facts.model import FULL, SLIDING, ModelFacts


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
        bits = gguf_bits(level)
        facts.weight_bytes = int(int(params) * bits / 8)
        facts.weight_bytes_source = f"parameter_count x {bits} bits ({level or 'unknown type'})"
    else:
        facts.param_count = estimate_param_count(facts)
        facts.param_count_source = "config"
    return facts


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
