"""Errors the gateway answers itself, in OpenAI's shape, marked as the gateway's.

``{"error": {"message", "type", "param", "code"}, "src": "gpumod-gateway"}``: the
openai client reads ``error.message``; ``src`` tells a user the gateway (not the
engine) said it, as llama-swap's ``"src": "llama-swap"`` does.
"""

from __future__ import annotations

import json

SOURCE = "gpumod-gateway"
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}
_CODES = {400: "bad_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
          413: "request_too_large", 429: "rate_limited", 502: "backend_failed",
          503: "unavailable", 504: "timeout"}


class GatewayError(Exception):
    """An answer the gateway gives instead of the engine's."""

    def __init__(self, status: int, message: str, code: str | None = None, *,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.retry_after = retry_after

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            out.append((b"retry-after", str(max(1, round(self.retry_after))).encode()))
        return out


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code or _CODES.get(status, "error")},
                       "src": SOURCE}).encode()


def stream_error(message: str, code: str) -> bytes:
    """An SSE event carrying an error (the openai client raises APIError on it)."""
    payload = json.loads(error_body(502, message, code))
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
