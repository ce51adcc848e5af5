"""A bearer key for `gpumod mcp --transport http`: its tools start and stop GPU services.

Loopback is not a boundary between users of one machine, so the HTTP transport never
runs without a key. The key comes from the environment (GPUMOD_MCP_KEY, else
PI_API_KEY), never from argv, where `ps` would show it. Plain ASGI middleware, not
Starlette's BaseHTTPMiddleware (that one hides `http.disconnect` from streaming
responses). No dependency on the MCP SDK.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gpumod.errors import ConfigError

KEY_VARS = ("GPUMOD_MCP_KEY", "PI_API_KEY")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def key_from_env() -> str:
    """The key clients must send as `Authorization: Bearer KEY`; ConfigError without one."""
    for var in KEY_VARS:
        key = os.environ.get(var, "")
        if key.strip():
            if not all(32 < ord(c) < 127 for c in key):
                raise ConfigError(f"{var} must be printable ASCII without spaces to work as "
                                  "an HTTP bearer key", hint="e.g. export GPUMOD_MCP_KEY="
                                  "$(python3 -c 'import secrets; print(secrets.token_urlsafe())')")
            return key
    raise ConfigError("`gpumod mcp --transport http` needs a key: its tools start and stop "
                      "services, and any local user could reach the port",
                      hint="export GPUMOD_MCP_KEY=<a long random secret>; clients send "
                           "`Authorization: Bearer <it>` (or use the stdio transport)")


class BearerAuth:
    """Let a request through only with `Authorization: Bearer <key>`; 401 otherwise."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = b"Bearer " + key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"type": "authentication_error",
                                     "message": "missing or wrong bearer key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="gpumod"')]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        given = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
        # one header, compared in constant time
        return len(given) == 1 and hmac.compare_digest(given[0], self.expected)
