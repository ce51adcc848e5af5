"""The gateway in front of the real llama-server (CPU, SmolLM2-135M), with its own key.

llama.cpp has no sleep outside router mode, so its idle action is stop; the next
request starts it again through the lifecycle.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

from gpumod.ops import lifecycle
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from tests.support.gateway import GatewayThread
from tests.support.real import free_port, llama_server_binary, tiny_gguf
from tests.support.services import stop_all

pytestmark = pytest.mark.llama
BACKEND_KEY = "llama-backend-key-0123456789"


@pytest.fixture
def store(monkeypatch):
    binary = llama_server_binary()
    model = tiny_gguf()
    monkeypatch.setenv("PI_API_KEY", BACKEND_KEY)  # the engine's own key (not the gateway's)
    st = open_store()
    with st.transaction() as db:
        db.execute("UPDATE hosts SET engine_env = ? WHERE name = 'local'",
                   (json.dumps({"llamacpp_binary": binary}),))
    lifecycle.add_service(st, ServiceSpec(
        "tiny", "local", "llamacpp", str(model), free_port(), args=("-c", "512", "-t", "2"),
        extra={"idle_ttl": 3, "aliases": ["small"]}))
    yield st
    stop_all(st)


def test_openai_client_through_the_gateway_to_llama_server(store):
    gw = GatewayThread(start_timeout=120).start()
    try:
        client = gw.client()
        assert lifecycle.get_service(store, "tiny").state == "stopped"
        reply = client.chat.completions.create(
            model="small", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content  # started on request, then answered
        assert lifecycle.get_service(store, "tiny").state == "running"
        # the engine really wants its own key: without the gateway's help it refuses
        direct = openai.OpenAI(base_url=f"http://127.0.0.1:{lifecycle.get_service(store, 'tiny').port}/v1",
                               api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            direct.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
        stream = client.chat.completions.create(
            model="tiny", max_tokens=8, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Count: one, two,"}])
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len(pieces) > 1 and "".join(pieces).strip()
        ended = time.monotonic()
        gw.wait_for(lambda: lifecycle.get_service(store, "tiny").state == "stopped",
                    timeout=20, what="the idle TTL to stop llama-server")
        assert time.monotonic() - ended >= 3
        rt = lifecycle.runtime(store, lifecycle.get_service(store, "tiny"))
        assert not rt.alive()
        again = client.chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert again.choices[0].message.content is not None
        metrics = gw.gateway.metrics
        assert metrics.activations[("tiny", "start", "ok")].count == 2
        assert metrics.evictions[("tiny", "stopped")] == 1
        assert metrics.completion_tokens["tiny"] > 0  # llama-server reports usage
    finally:
        gw.stop()
