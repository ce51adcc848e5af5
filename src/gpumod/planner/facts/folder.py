"""Facts from a local model folder: ``config.json`` plus safetensors sizes.

The size comes from ``model.safetensors.index.json``'s ``metadata.total_size``,
else from the safetensors headers (read, never the tensors themselves).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from gpumod.errors import ConfigError, NotFoundError
from gpumod.planner.facts.config import facts_from_config
from gpumod.planner.facts.gguf import facts_from_gguf
from gpumod.planner.facts.model import ModelFacts


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
