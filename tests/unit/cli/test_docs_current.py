"""docs/cli.md is generated from the CLI: it must match what the CLI says now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts/gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    actual = (ROOT / "docs/cli.md").read_text()
    if actual != expected:
        import difflib

        diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                            "docs/cli.md", "CLI now", n=1))
        raise AssertionError("docs/cli.md is out of date: run scripts/gen_cli_docs.py\n"
                             + diff[:3000])
