"""The one way gpumod's agents talk to a model: endpoint, client, errors, tool arguments.

Shared by `pi prompt` (agent/loop.py) and `gpumod plan` (agent/planning.py): an
`Endpoint` says where a model answers (never printing its key), `make_client`
opens the official `openai` SDK on it, `translate_error` turns the SDK's
exceptions into gpumod's typed errors, and `parse_arguments` reads the JSON
arguments a model sends with a tool call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import ConfigError, EngineError, GpumodError, UsageError

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint: base URL (…/v1), model id (None: ask it), key."""

    base_url: str
    model: str | None
    api_key: str | None = field(default=None, repr=False)
    label: str = ""

    @property
    def key_set(self) -> bool:
        return self.api_key is not None

    def to_json(self) -> dict[str, Any]:  # never the key
        return {"base_url": self.base_url, "model": self.model, "label": self.label,
                "api_key_set": self.key_set}


def check_url(url: str, what: str) -> str:
    """An http(s) URL with a host, without its trailing slash; UsageError otherwise."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(f"{what} must be an http(s) URL, got {url!r}",
                         hint=f"e.g. {what} http://127.0.0.1:8000/v1" if what.startswith("--")
                         else "e.g. http://127.0.0.1:8000/v1")
    return url.rstrip("/")


def make_client(base_url: str, api_key: str | None, *,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """An OpenAI client for the endpoint; no retries, so failures show at once."""
    from openai import OpenAI, Timeout  # the SDK's own HTTP library (httpx2 in openai 3)

    # The SDK insists on a key; an endpoint without one ignores the placeholder.
    return OpenAI(base_url=base_url, api_key=api_key or "no-key", max_retries=0,
                  timeout=Timeout(timeout_s, connect=10.0))


def client_for(endpoint: Endpoint, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    return make_client(endpoint.base_url, endpoint.api_key, timeout_s=timeout_s)


def error_detail(exc: Exception) -> str:
    """The server's own message, on one short line."""
    body = getattr(exc, "body", None)
    text = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            text = inner.get("message") or inner.get("detail")
        elif isinstance(inner, str):
            text = inner
    if not text:
        text = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:300] + "..."


def translate_error(exc: Exception, *, base_url: str, key_set: bool) -> GpumodError:
    """SDK exceptions -> gpumod's typed errors, one clear line each (never the key)."""
    import openai

    if isinstance(exc, GpumodError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return EngineError(f"the endpoint {base_url} did not answer in time",
                           hint="is the model still loading? see `pi logs NAME`")
    if isinstance(exc, openai.APIConnectionError):
        cause = " ".join(str(exc.__cause__ or exc).split()) or "no answer"
        return EngineError(f"cannot reach {base_url}: {cause}",
                           hint="is the deployment running? see `pi list` and `pi logs NAME`")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        if not key_set:
            return ConfigError(f"the endpoint {base_url} needs an API key and PI_API_KEY is "
                               "not set", hint="export PI_API_KEY=<the deployment's key>")
        return ConfigError(f"the endpoint {base_url} refused the key in PI_API_KEY "
                           f"({exc.status_code})",
                           hint="use the key the deployment was started with")
    if isinstance(exc, openai.NotFoundError):
        return EngineError(f"the endpoint {base_url} answered 404: {error_detail(exc)}",
                           hint="check the model id (--model) and that the URL ends in /v1")
    if isinstance(exc, openai.APIStatusError):
        return EngineError(f"the endpoint {base_url} answered {exc.status_code}: "
                           f"{error_detail(exc)}")
    if isinstance(exc, openai.APIError):
        return EngineError(f"the endpoint {base_url} failed: {error_detail(exc)}")
    return EngineError(f"talking to {base_url} failed: {type(exc).__name__}: {exc}")


def discover_model(client: Any, *, base_url: str, key_set: bool) -> str:
    """The first model id the endpoint serves (for --base-url without --model)."""
    try:
        models = list(client.models.list())
    except Exception as exc:  # the SDK's errors, translated (typed) by translate_error
        raise translate_error(exc, base_url=base_url, key_set=key_set) from exc
    if not models:
        raise EngineError(f"the endpoint {base_url} lists no models",
                          hint="pass --model ID")
    return str(models[0].id)


def parse_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """A tool call's arguments (JSON text, or already a dict) as a dict.

    UsageError says what is wrong in words the model can act on.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the arguments are not valid JSON ({exc.msg} at position {exc.pos}); "
                         "send a JSON object such as {\"path\": \"/abs/dir\"}") from exc
    if not isinstance(value, dict):
        raise UsageError("the arguments must be a JSON object")
    return value
