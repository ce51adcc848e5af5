"""Plain-text tables and lines for listings, without rich.

Importing rich's console and table costs more than a whole local listing (tens of
milliseconds), so listings print through this small writer instead. Tables keep
rich's SIMPLE_HEAD look (bold header, one rule, three spaces between columns);
colour only on a terminal (or with FORCE_COLOR), never with NO_COLOR or TERM=dumb,
as rich decides. Text is never read as markup. Anything else (a rich renderable,
e.g. from `gpumod plan`) is handed to rich, imported only then.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

SGR = {"bold": "1", "dim": "2", "italic": "3", "red": "31", "green": "32", "yellow": "33",
       "blue": "34", "magenta": "35", "cyan": "36"}
GAP = "   "          # rich's cell padding on both sides of a blank column divider
NOT_A_TTY_WIDTH = 200
MIN_COLUMN = 8       # narrower than this, a column is not worth wrapping into


class Styled(str):
    """A string with a display style ("green", "dim bold"): text, never markup."""

    style: str

    def __new__(cls, text: object = "", style: str = "") -> Styled:
        self = super().__new__(cls, "" if text is None else str(text))
        self.style = style or ""
        return self


def paint(text: str, style: str, color: bool) -> str:
    codes = [SGR[word] for word in style.split() if word in SGR] if color else []
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


class Table:
    """Rows of cells, laid out to the console's width when printed."""

    def __init__(self, *columns: str, title: str | None = None) -> None:
        self.columns = [str(c) for c in columns]
        self.title = title
        self.rows: list[list[str]] = []

    def add_row(self, *cells: object) -> None:
        row = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in cells]
        self.rows.append((row + [""] * len(self.columns))[:len(self.columns)])

    def widths(self, available: int) -> list[int]:
        widths = [max([len(self.columns[i])] + [len(line) for row in self.rows
                                                for line in row[i].splitlines() or [""]])
                  for i in range(len(self.columns))]
        # Too wide: narrow the widest column, a character at a time, wrapping its cells.
        while sum(widths) + len(GAP) * (len(widths) - 1) > available:
            widest = max(range(len(widths)), key=lambda i: widths[i])
            if widths[widest] <= MIN_COLUMN:
                break
            widths[widest] -= 1
        return widths

    def render(self, available: int, color: bool) -> list[str]:
        widths = self.widths(available)
        total = sum(widths) + len(GAP) * (len(widths) - 1)
        lines = []
        if self.title:
            left = max(0, (total - len(self.title)) // 2)
            title = " " * left + self.title
            lines.append(paint(title, "italic", color) + " " * max(0, total - len(title)))
        lines += _row([Styled(c, "bold") for c in self.columns], widths, color)
        lines.append("─" * total)
        for row in self.rows:
            lines += _row(row, widths, color)
        return lines


def _row(cells: list[str], widths: list[int], color: bool) -> list[str]:
    wrapped = [wrap(cell, width) for cell, width in zip(cells, widths, strict=True)]
    height = max(len(parts) for parts in wrapped)
    out = []
    for n in range(height):
        pieces = []
        for cell, parts, width in zip(cells, wrapped, widths, strict=True):
            text = parts[n] if n < len(parts) else ""
            pad = " " * (width - len(text))
            pieces.append(paint(text, getattr(cell, "style", ""), color) + pad)
        out.append(GAP.join(pieces))
    return out


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most width characters: at spaces where it can, else folded."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            while len(word) > width:
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:width])
                word = word[width:]
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


class Console:
    """print() for Styled text, str and Table; rich renderables go to rich."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr
        self._rich: Any = None

    @property
    def file(self) -> IO[str]:
        return sys.stderr if self.stderr else sys.stdout

    def is_terminal(self) -> bool:
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False

    def color(self) -> bool:
        if "NO_COLOR" in os.environ:
            return False
        if os.environ.get("FORCE_COLOR"):
            return True
        return self.is_terminal() and os.environ.get("TERM") != "dumb"

    def width(self) -> int:
        if not self.is_terminal():
            return NOT_A_TTY_WIDTH
        import shutil

        return shutil.get_terminal_size().columns  # COLUMNS first, as rich and click do

    def print(self, *objects: Any, style: str | None = None, end: str = "\n") -> None:
        if any(not isinstance(o, (str, Table)) for o in objects):
            self.rich().print(*objects, style=style, end=end)
            return
        color = self.color()
        parts = []
        for o in objects:
            if isinstance(o, Table):
                parts.append("\n".join(o.render(self.width(), color)))
            else:
                parts.append(paint(o, " ".join(filter(None, (style, getattr(o, "style", "")))),
                                   color))
        self.file.write(" ".join(parts) + end)
        self.file.flush()

    def rich(self) -> Any:
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(stderr=self.stderr, highlight=False, soft_wrap=False,
                                     width=None if self.is_terminal() else NOT_A_TTY_WIDTH)
        return self._rich
