"""Model facts: what the planner needs to know about a model, from wherever it lives.

Sources, each turned into one :class:`ModelFacts` (one module each):

- ``config``: a transformers ``config.json`` (dict);
- ``folder``: a local folder (``config.json`` plus safetensors sizes);
- ``gguf``: a GGUF file's header and tensor sizes;
- ``ollama``: Ollama's ``/api/show`` answer;
- ``hub``: a Hugging Face id (``config.json`` plus the Hub's safetensors metadata);
- the catalog's shipped facts (``gpumod.catalog.facts``), so catalog models need no network.

:func:`resolve` picks the source for a model reference. It never touches the
store: caching fetched facts is the operations layer's job (``gpumod.ops.facts``).
"""

from __future__ import annotations

from pathlib import Path

from gpumod.errors import NotFoundError, UsageError
from gpumod.planner.facts.config import estimate_param_count, facts_from_config, text_config
from gpumod.planner.facts.folder import facts_from_folder
from gpumod.planner.facts.gguf import GGUF_BITS, facts_from_gguf, gguf_split_files
from gpumod.planner.facts.hub import HubClient, facts_from_hub
from gpumod.planner.facts.model import (
    DTYPE_BYTES,
    FULL,
    LINEAR,
    MAMBA,
    NONE,
    SLIDING,
    ModelFacts,
)
from gpumod.planner.facts.ollama import facts_from_ollama_show, fetch_ollama_show

__all__ = [
    "DTYPE_BYTES", "FULL", "GGUF_BITS", "LINEAR", "MAMBA", "NONE", "SLIDING", "HubClient",
    "ModelFacts", "catalog_facts", "estimate_param_count", "facts_from_config",
    "facts_from_folder", "facts_from_gguf", "facts_from_hub", "facts_from_ollama_show",
    "fetch_ollama_show", "gguf_split_files", "is_path", "resolve", "text_config",
]


def is_path(model: str) -> bool:
    """A local folder or GGUF file rather than a Hugging Face id."""
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or \
        Path(model).expanduser().exists()


def read_path(model: str) -> ModelFacts:
    """Facts of a local folder, config.json or GGUF file (always read fresh)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return facts_from_folder(path)
    if path.suffix == ".gguf" or path.is_file():
        if path.suffix != ".gguf" and path.name == "config.json":
            return facts_from_folder(path.parent)
        return facts_from_gguf(path)
    raise NotFoundError(f"{model}: no such file or folder",
                        hint="give a model folder, a .gguf file or a Hugging Face id")


def catalog_facts(model: str) -> ModelFacts | None:
    """Facts the catalog ships for MODEL (config fields and weight sizes), or None."""
    from gpumod.catalog.facts import known_facts

    record = known_facts(model)
    if record is None:
        return None
    facts = facts_from_config(record.config, key=record.id, source="catalog")
    if record.weight_bytes:
        facts.weight_bytes = record.weight_bytes
        facts.weight_bytes_source = f"catalog: {record.weight_source}"
    if record.param_count:
        facts.param_count = record.param_count
        facts.param_count_source = f"catalog: {record.weight_source}"
    facts.notes.append(f"facts shipped with the catalog ({record.config_source})")
    return facts


def resolve(model: str, *, hub: HubClient | None = None, use_catalog: bool = True
            ) -> ModelFacts:
    """Facts for MODEL: a local folder or GGUF, a catalog model, or a Hugging Face id.

    Catalog models are answered from the facts shipped with the package (no
    network) unless ``use_catalog`` is false; other ids ask the Hub.
    """
    from gpumod import validate

    model = model.strip()
    if not model:
        raise UsageError("no model given")
    if is_path(model):
        return read_path(model)
    if model.startswith("ollama:"):
        raise NotFoundError(f"no facts for {model}",
                            hint="record them with `gpumod model info --ollama URL NAME`")
    if not validate.hf_id(model):
        raise UsageError(f"invalid model {model!r}",
                         hint="use a Hugging Face id (owner/name), a folder or a .gguf path")
    if use_catalog:
        known = catalog_facts(model)
        if known is not None:
            return known
    return facts_from_hub(model, hub)
