"""The HTTP transport's bearer key: where it comes from, and the ASGI check itself."""

from __future__ import annotations

import anyio
import pytest

from gpumod.errors import ConfigError
from gpumod.mcp.auth import BearerAuth, key_from_env


def test_key_comes_from_gpumod_mcp_key_then_pi_api_key(monkeypatch):
    monkeypatch.delenv("GPUMOD_MCP_KEY", raising=False)
    monkeypatch.setenv("PI_API_KEY", "pi-key-123")
    assert key_from_env() == "pi-key-123"
    monkeypatch.setenv("GPUMOD_MCP_KEY", "mcp-key-456")
    assert key_from_env() == "mcp-key-456"


@pytest.mark.parametrize("value", [None, "", "   ", "with space", "tab\there", "ünï", "a\nb"])
def test_missing_or_unusable_keys_are_refused_in_one_line(monkeypatch, value):
    monkeypatch.delenv("PI_API_KEY", raising=False)
    if value is None:
        monkeypatch.delenv("GPUMOD_MCP_KEY", raising=False)
    else:
        monkeypatch.setenv("GPUMOD_MCP_KEY", value)
    with pytest.raises(ConfigError) as err:
        key_from_env()
    assert "\n" not in err.value.message and err.value.hint and err.value.exit_code == 2
    if value and value.strip():
        assert value not in err.value.message + err.value.hint  # the key is never printed


def call(app, scope):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    return sent


def test_asgi_check_lets_only_the_exact_bearer_key_through():
    seen: list[str] = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = BearerAuth(inner, 'k"ey')
    ok = {"type": "http", "headers": [(b"authorization", b'Bearer k"ey')]}
    assert call(app, ok)[0]["status"] == 200
    for headers in ([], [(b"authorization", b"Bearer key")], [(b"authorization", b'k"ey')],
                    [(b"authorization", b'bearer k"ey')],
                    [(b"authorization", b'Bearer k"ey'), (b"authorization", b"Bearer x")]):
        answer = call(app, {"type": "http", "headers": headers})
        assert answer[0]["status"] == 401
        assert (b"www-authenticate", b'Bearer realm="gpumod"') in answer[0]["headers"]
    assert seen == ["http"]
    assert call(app, {"type": "websocket", "headers": []}) == [{"type": "websocket.close",
                                                                "code": 1008}]
    lifespan: list[str] = []

    async def life(scope, receive, send):
        lifespan.append(scope["type"])

    call(BearerAuth(life, "k"), {"type": "lifespan"})
    assert lifespan == ["lifespan"]
