"""Model facts shipped with the catalog, so its models are planned without the network.

One JSON file per catalog model in ``catalog/data/facts/`` (``owner__name.json``)::

    {"id": "Qwen/Qwen3-0.6B",
     "config": {... the config.json fields the planner reads ...},
     "config_source": "where those numbers were read",
     "param_count": 596049920,            # optional
     "weight_bytes": 1192099840,          # optional: checkpoint size in bytes
     "weight_source": "where the size or the parameter count comes from"}

``gpumod.planner.facts.catalog_facts`` turns a record into ModelFacts.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gpumod.errors import ConfigError


@dataclass(frozen=True)
class FactsRecord:
    id: str
    config: dict[str, Any] = field(default_factory=dict)
    config_source: str = ""
    param_count: int = 0
    weight_bytes: int = 0
    weight_source: str = ""


def file_name(model_id: str) -> str:
    return model_id.replace("/", "__") + ".json"


@functools.lru_cache(maxsize=1)
def _records() -> dict[str, FactsRecord]:
    folder = resources.files("gpumod.catalog") / "data" / "facts"
    out: dict[str, FactsRecord] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        try:
            raw = json.loads(entry.read_text())
            record = FactsRecord(id=str(raw["id"]), config=dict(raw["config"]),
                                 config_source=str(raw.get("config_source") or ""),
                                 param_count=int(raw.get("param_count") or 0),
                                 weight_bytes=int(raw.get("weight_bytes") or 0),
                                 weight_source=str(raw.get("weight_source") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"catalog facts {entry.name} are broken: {exc}") from exc
        out[record.id.lower()] = record
    return out


def known_facts(model_id: str) -> FactsRecord | None:
    """The shipped facts of a catalog model (case-insensitive id), or None."""
    return _records().get(model_id.strip().lower())


def known_ids() -> list[str]:
    return sorted(r.id for r in _records().values())
