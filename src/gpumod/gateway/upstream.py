"""The HTTP client from the gateway to the engines: aiohttp, one shared session.

Chosen by measurement (bench/gateway_clients.py; figures in docs/gateway.md): with 64
concurrent requests on loopback, aiohttp served ~12x the requests per second of httpx
(httpcore's pool does work proportional to queue x pool on every change) and ~2.6x
httpx over an aiohttp transport, at a quarter of httpx's latency for one request.

Settings for a proxy in front of local engines: no total timeout (a long generation is
not an error; the client decides when to give up and its disconnect closes ours), a
10 s connect timeout, up to 1000 pooled connections, and no decompression (bytes pass
through unchanged, with their Content-Encoding).
"""

from __future__ import annotations

from typing import Any

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the gateway sets itself.
_DROP_REQUEST = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection",
                           b"transfer-encoding", b"te", b"trailer", b"upgrade",
                           b"content-length", b"authorization", b"x-api-key",
                           b"proxy-authorization"})
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"trailer",
                            b"upgrade", b"proxy-connection", b"date", b"server"})


def request_headers(client: list[tuple[bytes, bytes]], key: str | None) -> dict[str, str]:
    """The client's headers minus hop-by-hop and its key to the gateway, plus the backend's."""
    out = {name.decode("latin-1"): value.decode("latin-1")
           for name, value in client if name.lower() not in _DROP_REQUEST}
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def response_headers(upstream: Any, *, streaming: bool) -> list[tuple[bytes, bytes]]:
    """The engine's response headers for the client; SSE gets no-buffering headers."""
    out = []
    for name, value in upstream.raw_headers:
        low = name.lower()
        if low in _DROP_RESPONSE or (streaming and low in (b"content-length", b"cache-control")):
            continue
        out.append((low, value))
    if streaming:
        out += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    return out


class Upstream:
    """One aiohttp session for the gateway's lifetime (created inside the event loop)."""

    def __init__(self, *, connect_timeout: float = 10.0, limit: int = 1000) -> None:
        self.connect_timeout = connect_timeout
        self.limit = limit
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, limit_per_host=0,
                                           keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            auto_decompress=False, trust_env=False)

    async def open(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
        """Send the request; returns the response with its body still unread."""
        return await self.session.request(method, url, headers=headers, data=body,
                                          allow_redirects=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
