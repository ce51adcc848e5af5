"""What users type that every front end reads the same way: name lists, contexts, sizes.

The CLI, the TUI's command line and the MCP tools hand their raw text here, so
`gpumod simulate --context chat=16k` and `/simulate --context chat=16k` accept
and refuse the same input with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpumod.errors import UsageError
from gpumod.units import parse_tokens

__all__ = ["context_item", "contexts", "names", "parse_tokens"]


def names(*values: str | None) -> list[str]:
    """Comma-separated names, from one value or several: ('a, b', 'c') -> [a, b, c]."""
    return [x.strip() for value in values for x in (value or "").split(",") if x.strip()]


def context_item(value: str, option: str = "--context") -> tuple[str, int]:
    """'chat=16k' -> ('chat', 16384); UsageError with an example otherwise."""
    service, sep, tokens = value.partition("=")
    try:
        if not sep or not service.strip():
            raise UsageError("no SERVICE=")
        return service.strip(), parse_tokens(tokens, what=option)
    except UsageError:
        raise UsageError(f"{option} wants SERVICE=TOKENS (e.g. chat=16384 or chat=16k), "
                         f"got {value!r}") from None


def contexts(values: Iterable[str], option: str = "--context") -> dict[str, int]:
    """Several SERVICE=TOKENS values as a dict (a later value for a service wins)."""
    return dict(context_item(v, option) for v in values)
