"""Validation of names and values that end up on hosts, in units and in argv."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gpumod.errors import UsageError

# Environment variables holding secrets: they reach engines only through 0600 files.
SECRET_VARS = ("PI_API_KEY", "HF_TOKEN")

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


def no_secret_in(values: Iterable[object], secrets: Iterable[str | None], where: str) -> None:
    """Refuse when a secret's raw value appears inside any of `values` (argv words, env
    values, manifest fields; nested lists and dicts are searched).

    Compared as plain text, never through an encoding (JSON, shell quoting) that would
    change a key holding quotes, backslashes or non-ASCII characters.
    """
    texts = list(_texts(values))
    for secret in secrets:
        if secret and any(secret in text for text in texts):
            hint = ("pass secrets only through PI_API_KEY / HF_TOKEN in your environment; "
                    "gpumod hands them to the engine in a 0600 file")
            if len(secret) < 12:  # `PI_API_KEY=k` turns up inside any path by chance
                hint = (f"the secret is only {len(secret)} character(s) long, so it turns up "
                        "by chance; use a longer one, e.g. export PI_API_KEY=$(python3 -c "
                        "'import secrets; print(secrets.token_hex(16))')")
            raise UsageError(f"a secret value (PI_API_KEY or HF_TOKEN) appears in the {where}",
                             hint=hint)


def _texts(value: object) -> Iterable[str]:
    """Every string inside nested lists, tuples and dicts (keys and values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item)
    elif value is not None:
        yield str(value)


def env_secrets() -> list[str]:
    """The secrets gpumod hands to engines, from this process's environment."""
    import os

    return [value for var in SECRET_VARS if (value := os.environ.get(var))]
