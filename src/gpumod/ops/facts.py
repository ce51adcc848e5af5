"""Model facts for the operations layer: read once, cached in the store, catalog offline.

Order: a local folder or GGUF is read fresh every time; a Hugging Face id is
answered from the store's cache, else from the facts the catalog ships (no
network for catalog models), else from the Hub (then cached). ``refresh``
skips the cache and the catalog and asks the Hub.
"""

from __future__ import annotations

from typing import Any

from gpumod.errors import NotFoundError
from gpumod.store import facts as facts_table
from gpumod.store.db import Store


def model_facts(store: Store | None, model: str, *, refresh: bool = False,
                hub: Any = None) -> Any:
    """ModelFacts for MODEL (HF id, folder, .gguf, or a recorded ``ollama:NAME``)."""
    from gpumod.planner import facts as facts_mod

    model = model.strip()
    if model and facts_mod.is_path(model):
        return facts_mod.resolve(model)
    if store is not None and not refresh:
        cached = facts_table.load_facts(store, model)
        if cached is not None:
            try:
                return facts_mod.ModelFacts.from_json(cached)
            except (TypeError, ValueError):
                pass                     # written by another version: fetch again
    if model.startswith("ollama:"):
        raise NotFoundError(f"no facts for {model}",
                            hint="record them with `gpumod model info --ollama URL NAME`")
    facts = facts_mod.resolve(model, hub=hub, use_catalog=not refresh)
    if store is not None and facts.source == "hf":
        remember(store, facts)
    return facts


def remember(store: Store, facts: Any) -> None:
    """Keep facts fetched over the network (Hub, Ollama) for later runs."""
    facts_table.save_facts(store, facts.key, facts.to_json())


def model_info(store: Store, model: str, *, ollama_url: str | None = None,
               refresh: bool = False) -> dict[str, Any]:
    """Facts of MODEL (summary) and its calibrations, newest first (`gpumod model info`).

    With ``ollama_url`` the facts are read from that Ollama server and kept.
    """
    from gpumod.planner import facts as facts_mod
    from gpumod.store import calibrations as cal_table

    if ollama_url:
        answer = facts_mod.fetch_ollama_show(ollama_url, model)
        facts = facts_mod.facts_from_ollama_show(model, answer)
        remember(store, facts)
    else:
        facts = model_facts(store, model, refresh=refresh)
    return {"facts": facts.summary(), "calibrations": cal_table.for_model(store, facts.key)}


def search_models(query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Models on the Hugging Face Hub matching QUERY, most downloaded first."""
    from gpumod.errors import UsageError
    from gpumod.planner.facts import HubClient

    if not 1 <= limit <= 200:
        raise UsageError("--limit must be between 1 and 200")
    return HubClient().search(query, limit=limit)
