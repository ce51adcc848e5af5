"""Presets as `gpumod preset list` shows them, without importing pydantic or YAML.

Checking a preset takes pydantic, whose import alone costs more than a listing may.
The shipped presets cannot change after install, so they are checked once, when
`scripts/gen_catalog_data.py` writes them to data/presets.json (a test keeps that
file equal to what their YAML gives), and listings read that file. User presets
($GPUMOD_HOME/presets) are checked on every listing, so pydantic is imported only
where there are some.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpumod import paths
from gpumod.errors import ConfigError

INDEX = Path(__file__).parent / "data" / "presets.json"


def listing() -> tuple[list[dict[str, Any]], list[Any]]:
    """Every usable preset as JSON data with its "source" (user presets replacing shipped
    ones of the same kind and name, as presets.scan() says), and the broken user files
    (presets.Broken)."""
    found = {(p["kind"], p["name"]): {**p, "source": "builtin"}
             for p in json.loads(INDEX.read_text(encoding="utf-8"))}
    broken = []
    mine = paths.user_preset_files()
    if mine:
        from gpumod.catalog import presets

        for path in mine:
            try:
                item = presets.read_user_file(path)
            except ConfigError as exc:
                broken.append(presets.Broken(path, exc))
                continue
            data = item.preset.model_dump(mode="json")
            found[(data["kind"], data["name"])] = {**data, "source": item.source}
    rows = sorted(found.values(), key=lambda p: (p["kind"] != "service", p["name"]))
    return rows, broken
