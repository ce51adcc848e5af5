"""`gpumod --help` and `pi --help` without importing click.

Importing click costs more than the rest of the answer, and the top-level help is
fixed text, so it is laid out here the way click lays out the group in
gpumod.cli.group (a test compares the two at every width click can use): the
terminal's width clamped to 80, minus 2, at least 50.
"""

from __future__ import annotations

import os
import sys
import textwrap

from gpumod.cli.commands import COMMANDS, EPILOG, HELP

# The group's options as click lists them (version_option, --debug, the help option).
OPTIONS = (("--version", "Show the version and exit."),
           ("--debug", "Show tracebacks for errors."),
           ("-h, --help", "Show this message and exit."))
INDENT = 2


def terminal_columns() -> int:
    """shutil.get_terminal_size().columns (what click asks), without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def top_help(prog: str, columns: int | None = None) -> str:
    width = max(min(terminal_columns() if columns is None else columns, 80) - 2, 50)
    pad = " " * INDENT
    lines = [f"Usage: {prog} [OPTIONS] COMMAND [ARGS]...", ""]
    lines += _wrap(HELP, width, pad)
    lines += ["", "Options:", *_definitions(OPTIONS, width)]
    lines += ["", "Commands:", *_definitions([(n, h) for n, (_, h) in COMMANDS.items()], width)]
    # The epilog is one "\b" paragraph: click keeps its lines as they are, indented.
    lines += ["", *(pad + line for line in EPILOG.splitlines()[1:])]
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent,
                         replace_whitespace=False)


def _definitions(rows: list[tuple[str, str]] | tuple[tuple[str, str], ...], width: int
                  ) -> list[str]:
    """click's HelpFormatter.write_dl (col_max 30, col_spacing 2)."""
    first_col = min(max(len(term) for term, _ in rows), 30) + 2
    hang = " " * (first_col + INDENT)
    lines = []
    for term, text in rows:
        head = " " * INDENT + term
        if len(term) <= first_col - 2:
            head += " " * (first_col - len(term))
        else:
            lines.append(head)
            head = hang
        wrapped = _wrap(text, max(width - first_col - 2, 10)) or [""]
        lines.append(head + wrapped[0])
        lines += [hang + line for line in wrapped[1:]]
    return lines
