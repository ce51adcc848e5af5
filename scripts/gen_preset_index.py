"""Write src/gpumod/catalog/data/presets.json from the shipped preset YAML files.

`gpumod preset list` reads that index instead of checking the YAML with pydantic on
every run (gpumod.catalog.preset_index); a test keeps it current.

Usage: .venv/bin/python scripts/gen_preset_index.py [--check]
With --check, exit 1 when the index differs from what the YAML files give.
"""

from __future__ import annotations

import json
import sys

from gpumod.catalog.preset_index import INDEX
from gpumod.catalog.presets import builtin_index


def render() -> str:
    return json.dumps(builtin_index(), indent=1) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not INDEX.exists() or INDEX.read_text(encoding="utf-8") != text:
            print(f"{INDEX} is out of date: run scripts/gen_preset_index.py", file=sys.stderr)
            return 1
        return 0
    INDEX.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
