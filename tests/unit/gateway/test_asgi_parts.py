"""The key check (plain ASGI), OpenAI-shaped errors, usage scanning and metrics text."""

from __future__ import annotations

import asyncio
import json

from gpumod.gateway.auth import KeyAuth
from gpumod.gateway.errors import GatewayError, stream_error
from gpumod.gateway.metrics import Metrics, UsageScanner

KEY = "k" * 24


def call(app, path: str, headers: list[tuple[bytes, bytes]]):
    sent: list[dict] = []
    seen: dict = {}

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def inner(scope, receive_, send_):
        seen["receive"] = receive_
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"ok"})

    asyncio.run(KeyAuth(inner, KEY)({"type": "http", "path": path, "headers": headers},
                                    receive, send))
    return sent, seen.get("receive") is receive


def test_key_auth_bearer_or_x_api_key_and_open_health():
    ok_bearer, same_receive = call(None, "/v1/models", [(b"authorization", b"Bearer " + KEY.encode())])
    assert ok_bearer[0]["status"] == 200
    assert same_receive  # the app sees the real receive channel (disconnects stay visible)
    assert call(None, "/v1/models", [(b"x-api-key", KEY.encode())])[0][0]["status"] == 200
    assert call(None, "/health", [])[0][0]["status"] == 200
    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"x-api-key", b"")],
                    [(b"authorization", b"Basic " + KEY.encode())],
                    [(b"authorization", KEY.encode())]):
        sent, _ = call(None, "/v1/chat/completions", headers)
        assert sent[0]["status"] == 401
        body = json.loads(sent[1]["body"])
        assert body["error"]["type"] == "authentication_error"
        assert body["src"] == "gpumod-gateway"


def test_key_auth_edge_cases_the_docs_promise():
    # decided (docs/gateway.md, "The key"): exact and case-sensitive; the scheme is not;
    # one matching key of two headers is enough; /metrics and the status page need it
    key = KEY.encode()
    accepted = ([(b"authorization", b"bearer " + key)], [(b"authorization", b"Bearer  " + key)],
                [(b"authorization", b"Bearer " + key), (b"x-api-key", b"wrong")],
                [(b"authorization", b"Bearer wrong"), (b"x-api-key", key)])
    for headers in accepted:
        assert call(None, "/v1/models", headers)[0][0]["status"] == 200, headers
    refused = ([(b"authorization", b"Bearer ")], [(b"authorization", b"Bearer " + key.upper())],
               [(b"authorization", b"Bearer " + key[:-1])], [(b"x-api-key", key + b"x")])
    for headers in refused:
        assert call(None, "/v1/models", headers)[0][0]["status"] == 401, headers
    for path in ("/metrics", "/gateway/status", "/health/", "/v1/models"):
        assert call(None, path, [])[0][0]["status"] == 401, path


def test_errors_have_openai_shape_and_retry_after():
    err = GatewayError(503, "busy", "queue_timeout", retry_after=12.4)
    body = json.loads(err.body())
    assert body == {"error": {"message": "busy", "type": "server_error", "param": None,
                              "code": "queue_timeout"}, "src": "gpumod-gateway"}
    assert (b"retry-after", b"12") in err.headers()
    assert json.loads(GatewayError(404, "x").body())["error"]["code"] == "not_found"
    event = stream_error("died", "backend_died")
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["message"] == "died"


def test_usage_scanner_stream_split_and_responses_api():
    scanner = UsageScanner(streaming=True)
    text = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
            b"data: [DONE]\n\n")
    for i in range(0, len(text), 5):  # the usage line arrives in pieces
        scanner.feed(text[i:i + 5])
    assert scanner.finish() == {"prompt_tokens": 7, "completion_tokens": 3}
    responses = UsageScanner(streaming=True)
    responses.feed(b'event: response.completed\ndata: {"type":"response.completed",'
                   b'"response":{"usage":{"input_tokens":4,"output_tokens":2}}}\n\n')
    assert responses.finish() == {"input_tokens": 4, "output_tokens": 2}
    whole = UsageScanner(streaming=False)
    whole.feed(b'{"usage": {"prompt_tokens": 1,')
    whole.feed(b' "completion_tokens": 2}}')
    assert whole.finish() == {"prompt_tokens": 1, "completion_tokens": 2}


def test_metrics_text():
    m = Metrics()
    m.request("chat", 200, 0.02)
    m.request("chat", 503, 1.0)
    m.activation("chat", "wake", "ok", 0.4)
    m.evicted("emb", "sleeping", 0.1)
    m.usage("chat", {"input_tokens": 4, "output_tokens": 2})
    text = m.render([{"name": "chat", "state": "ready", "in_flight": 1, "queued": 0}])
    assert 'gpumod_gateway_requests_total{model="chat",code="503"} 1' in text
    assert 'gpumod_gateway_request_duration_seconds_bucket{model="chat",le="0.025"} 1' in text
    assert 'gpumod_gateway_request_duration_seconds_bucket{model="chat",le="+Inf"} 2' in text
    assert 'gpumod_gateway_activation_seconds_count{model="chat",kind="wake",result="ok"} 1' \
        in text
    assert 'gpumod_gateway_evictions_total{model="emb",action="sleeping"} 1' in text
    assert 'gpumod_gateway_prompt_tokens_total{model="chat"} 4' in text
    assert 'gpumod_gateway_model_state{model="chat",state="ready"} 1' in text
    assert 'gpumod_gateway_model_state{model="chat",state="sleeping"} 0' in text


def test_the_gateway_process_refuses_a_key_no_client_can_send(monkeypatch, capsys, tmp_path):
    # `gateway start` checks the key; the process checks it again (its env file may be edited)
    from gpumod.gateway.server import main

    config = tmp_path / "config.json"
    config.write_text("{}")
    for key in ("", "   ", KEY + " "):
        monkeypatch.setenv("PI_API_KEY", key)
        assert main(["serve", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: PI_API_KEY ") and KEY not in err
