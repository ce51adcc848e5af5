"""Validation of names and values that end up on hosts, in units and in argv."""

from __future__ import annotations

import re

from gpumod.errors import UsageError

# Always fullmatch: `$` in re.match also matches before a trailing newline ("evil\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Hugging Face ids: owner/name, each part letters, digits, '-', '_', '.'
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def name(value: str, what: str = "name") -> str:
    """A pod, service or mode name: safe as a file name, unit name and URL part."""
    if not _NAME.fullmatch(value or "") or value in {".", ".."}:
        raise UsageError(
            f"invalid {what} {value!r}",
            hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def hf_id(value: str) -> bool:
    return bool(_HF_ID.fullmatch(value)) and ".." not in value


def port(value: int) -> int:
    if not 1 <= int(value) <= 65535:
        raise UsageError(f"invalid port {value}", hint="use a port between 1 and 65535")
    return int(value)


def no_control_chars(value: str, what: str) -> str:
    """Reject newlines and other control characters (they break unit files and logs)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"{what} contains a control character", hint="remove newlines and tabs")
    return value
