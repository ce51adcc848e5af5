"""Write docs/cli.md from the CLI itself, so the reference never drifts.

Usage: .venv/bin/python scripts/gen_cli_docs.py [--check]
With --check, exit 1 when docs/cli.md differs from what the CLI says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gpumod.cli.commands import COMMANDS
from gpumod.cli.group import cli

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

HEADER = """# Command reference

Generated from the CLI by `scripts/gen_cli_docs.py` (a test keeps it current).
Every command works as `gpumod ...` and `pi ...`.

Exit codes: 0 ok; 2 bad usage or configuration; 3 not found; 4 conflict
(name, port or lock taken); 5 host unreachable or authentication refused;
6 a command on the host failed; 7 engine failed; 8 does not fit (VRAM);
70 internal error (run with `--debug` for the traceback); 130 cancelled.
`pi ssh` exits with the remote command's own exit code.

"""


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # Child contexts inherit the root's settings (-h/--help), as when the CLI runs.
    return click.Context(command, info_name=name, parent=parent, terminal_width=100,
                         max_content_width=100, **({} if parent else cli.context_settings))


def _walk(command: click.Command, ctx: click.Context, path: list[str], out: list[str]) -> None:
    level = "#" * min(len(path) + 1, 4)
    out.append(f"{level} `{' '.join(['gpumod', *path])}`\n\n```\n{command.get_help(ctx)}\n```\n")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                _walk(sub, _context(sub, name, ctx), [*path, name], out)


def render() -> str:
    out = [HEADER]
    root = _context(cli, "gpumod", None)
    for name in COMMANDS:
        command = cli.get_command(root, name)
        if command is not None:
            _walk(command, _context(command, name, root), [name], out)
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/cli.md is out of date: run scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
