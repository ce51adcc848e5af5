"""The fast top-level help (cli/fasthelp.py, printed without importing click) is the
help click itself prints for the group."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("prog", ["pi", "gpumod"])
def test_top_help_is_what_click_prints(prog: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast help is laid out as click lays out the group, at every width click uses
    (the terminal's COLUMNS, clamped to 80, at least 50)."""
    import click

    from gpumod.cli.fasthelp import top_help
    from gpumod.cli.group import cli

    for columns in (20, 50, 52, 60, 64, 71, 79, 80, 81, 200):
        monkeypatch.setenv("COLUMNS", str(columns))
        ctx = click.Context(cli, info_name=prog, **cli.context_settings)
        assert top_help(prog) == cli.get_help(ctx) + "\n", columns
