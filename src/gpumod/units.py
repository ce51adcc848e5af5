"""Sizes typed by people: token counts ('32k') and byte sizes ('20G').

The one parser of token counts: `pi start --context`, `gpumod simulate --context`,
the TUI's /simulate, `gpumod model estimate --max-model-len` and the engine-args
readers of the planner (``--max-model-len 32k``, ``-c 8192``) all call
:func:`parse_tokens`, so they accept and refuse the same text.
"""

from __future__ import annotations

import re

from gpumod.errors import UsageError

_TOKENS = re.compile(r"\s*(\d+)\s*([kKmM]?)\s*")
_BYTES = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*")
MAX_CONTEXT = 1024 * 1024  # "1m": the most `pi start --context` takes


def parse_tokens(text: str | int, *, what: str = "token count", maximum: int | None = None,
                 bare_minimum: int = 1) -> int:
    """'4k' -> 4096, '1m' -> 1048576, '8192' -> 8192; else UsageError.

    ``maximum`` caps the value; ``bare_minimum`` is the least a number without
    a suffix may be (so that '32' typed for '32k' is refused, not taken as 32 tokens).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    match = _TOKENS.fullmatch(str(text))
    if not match:
        raise UsageError(f"invalid {what} {text!r}",
                         hint="use e.g. 8192, 4k, 32k, 128k or 1m")
    number, unit = int(match.group(1)), match.group(2).lower()
    value = number * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]
    if value < 1 or (maximum is not None and value > maximum):
        top = f" up to {maximum} tokens" if maximum else ""
        raise UsageError(f"{what} {str(text).strip()!r} is out of range",
                         hint=f"use a size from 1 token{top}")
    if not unit and value < bare_minimum:
        raise UsageError(f"{what} {str(text).strip()!r} is too small",
                         hint=f"give at least {bare_minimum} tokens, or use a suffix: 4k, 32k")
    return value


def parse_bytes(text: str) -> int:
    """'20G' / '20GiB' / '512M' / '1073741824' -> bytes (binary units); else UsageError."""
    m = _BYTES.fullmatch(str(text))
    if not m:
        raise UsageError(f"invalid size {text!r}", hint="use bytes or e.g. 20G, 512M")
    unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * unit)
