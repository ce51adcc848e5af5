"""Write the catalog's JSON copies from its YAML: data/models.json and data/presets.json.

The YAML files are what people edit; listings and starts read the JSON (no YAML
parser or pydantic import on every run: gpumod.catalog.models, .preset_index).
A test keeps the copies equal to what the YAML gives.

Usage: .venv/bin/python scripts/gen_catalog_data.py [--check]
With --check, exit 1 when a copy differs from what the YAML files give.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpumod.catalog.models import CATALOG_JSON, catalog_from_yaml
from gpumod.catalog.preset_index import INDEX
from gpumod.catalog.presets import builtin_index


def render() -> dict[Path, str]:
    return {CATALOG_JSON: json.dumps(catalog_from_yaml(), indent=1) + "\n",
            INDEX: json.dumps(builtin_index(), indent=1) + "\n"}


def main() -> int:
    stale = []
    for path, text in render().items():
        if "--check" in sys.argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{path} is out of date: run scripts/gen_catalog_data.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
