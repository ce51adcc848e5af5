"""The one key: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; 401 otherwise.

Plain ASGI middleware on purpose: Starlette's BaseHTTPMiddleware runs the app in a
separate task and hides ``http.disconnect`` from it, and the gateway must see a client
leave (also while a model is still waking) to cancel the upstream request.
Comparison is constant-time. ``/health`` stays open, like the engines' own.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from gpumod.gateway.errors import error_body

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]
OPEN_PATHS = frozenset({"/health"})


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    keys = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                keys.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            keys.append(value.strip())
    return keys


class KeyAuth:
    def __init__(self, app: ASGIApp, key: str, *, open_paths: frozenset[str] = OPEN_PATHS
                 ) -> None:
        if not key:
            raise ValueError("the gateway needs a key")
        self.app = app
        self._key = key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if any(hmac.compare_digest(k, self._key) for k in presented_keys(scope["headers"])):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body",
                    "body": error_body(401, "missing or wrong API key: send it as "
                                            "'Authorization: Bearer KEY' or 'x-api-key: KEY'")})
