"""What went wrong when talking to Hugging Face, in one line, from what the hub said.

The `hf` CLI ends every failure with its own "Hint: set HF_DEBUG=1 ..." line, and
huggingface_hub's exceptions name an httpx class; neither tells a user what to do.
:func:`download_error` reads the CLI's output (`hf download` runs on the host, so its
output is all there is) and :func:`network_cause` the text of a connection error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from gpumod.errors import EngineError, GpumodError, NotFoundError, TransportError, UsageError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Connection failures, as the OS and httpx word them; the first one found is the cause.
_NETWORK = re.compile(
    r"name or service not known|temporary failure in name resolution|"
    r"nodename nor servname provided|no address associated with hostname|"
    r"connection refused|connection reset|network is unreachable|no route to host|"
    r"timed out|certificate verify failed|proxy error", re.IGNORECASE)
_UNAUTHORIZED = re.compile(r"\b401\b|invalid credentials|invalid username or password|"
                           r"unauthorized", re.IGNORECASE)
_GATED = re.compile(r"requires approval|gated|\b403\b|access to model .* is restricted",
                    re.IGNORECASE)
_NO_FILE = re.compile(r"file not found in|entry not found|entrynotfound", re.IGNORECASE)
_NO_REPO = re.compile(r"(model|repository|repo) '?[^ ]*'? not found|repository not found|"
                      r"repositorynotfound|\b404\b", re.IGNORECASE)
_NO_SPACE = re.compile(r"no space left on device", re.IGNORECASE)

NETWORK_HINT = ("check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT; a model already "
                "in the Hugging Face cache needs no network")


def clean(line: str) -> str:
    return _ANSI.sub("", line).strip()


def quiet_hints(out: Callable[[str], None]) -> Callable[[str], None]:
    """`out` without the CLI's own "Hint: ..." lines (HF_DEBUG, `hf skills`)."""
    return lambda line: None if clean(line).startswith("Hint:") else out(line)


def network_cause(text: str) -> str | None:
    """'name or service not known', 'connection refused', ... found in text, else None."""
    match = _NETWORK.search(text)
    return match.group(0).lower() if match else None


def download_error(repo: str, file: str | None, output: Iterable[str], *,
                   where: str, code: int) -> GpumodError:
    """The typed error for a failed `hf download` from the end of its output."""
    lines = [clean(line) for line in output]
    lines = [line for line in lines if line and not line.startswith("Hint:")]
    text = "\n".join(lines)
    what = f"{repo}/{file}" if file else repo
    head = f"downloading {what} on {where} failed"
    cause = network_cause(text)
    if cause:
        return TransportError(f"{head}: cannot reach Hugging Face: {cause}", hint=NETWORK_HINT)
    if _NO_SPACE.search(text):
        return EngineError(f"{head}: no space left on the disk",
                           hint=f"free space on {where}, or point the cache elsewhere "
                                "(--models-path at pod setup)")
    if _GATED.search(text):
        return UsageError(f"{head}: 403: {repo} is gated",
                          hint="accept its licence on its Hugging Face page with the account "
                               "whose token is HF_TOKEN")
    if _UNAUTHORIZED.search(text):
        return UsageError(f"{head}: 401: check HF_TOKEN",
                          hint="export HF_TOKEN=hf_... (a token that can read this repo)")
    if file and _NO_FILE.search(text):
        return NotFoundError(f"{head}: 404: no file {file} in {repo}",
                             hint="check the file name (OWNER/REPO:FILE.gguf) on the repo's "
                                  "Files page")
    if _NO_REPO.search(text):
        return NotFoundError(f"{head}: 404: no such model",
                             hint="check the id (owner/name); private models need HF_TOKEN; "
                                  "`gpumod model search WORDS` finds ids")
    last = next((line for line in reversed(lines)), f"exit code {code}")
    return EngineError(f"{head}: {last.removeprefix('Error: ')}",
                       hint="check HF_TOKEN and that you have access to the model")
