"""The gateway in front of the fake vLLM (real processes, real lifecycle, real openai client).

The gateway changes services only through the lifecycle: the last tests check what the
records say after it acted, and that it serialises with other gpumod commands.

The fake nvidia-smi gives one 24 GiB card; each fake vLLM registers util x total there
and refuses to start when that much is not free, as vLLM does.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from gpumod.ops import lifecycle, locks
from gpumod.store.db import open_store
from tests.support.gateway import KEY, GatewayThread
from tests.support.real import free_port
from tests.support.services import fake_host, stop_all, vllm_spec

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def store(tmp_path, monkeypatch):
    fake_host(tmp_path, monkeypatch)
    monkeypatch.setenv("PI_API_KEY", "backend-key-0123456789abcdef")
    st = open_store()
    yield st
    stop_all(st)


@pytest.fixture
def gateway(store):
    started: list[GatewayThread] = []

    def make(**settings) -> GatewayThread:
        gw = GatewayThread(**settings).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def add(store, name: str, *, util: str = "0.3", sleep: str = "l1", env: dict | None = None,
        **extra) -> None:
    spec = vllm_spec(name, free_port(), util=util, sleep=sleep, env=env)
    lifecycle.add_service(store, spec.with_(extra=extra))


def get(gw: GatewayThread, path: str, *, key: str | None = KEY) -> tuple[int, dict | str]:
    headers = {"x-api-key": key} if key else {}
    req = urllib.request.Request(f"http://127.0.0.1:{gw.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def engine_metrics(store, name: str) -> dict[str, float]:
    from gpumod.ops.watch import parse_metrics

    spec = lifecycle.get_service(store, name)
    with urllib.request.urlopen(f"http://127.0.0.1:{spec.port}/metrics", timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def chat(gw: GatewayThread, model: str, **kw) -> str:
    reply = gw.client().chat.completions.create(model=model, messages=MESSAGES, **kw)
    return reply.choices[0].message.content


def test_wrong_key_unknown_model_and_open_health(store, gateway):
    add(store, "chat")
    gw = gateway()
    with pytest.raises(openai.AuthenticationError) as exc:
        gw.client(api_key="wrong").chat.completions.create(model="chat", messages=MESSAGES)
    assert exc.value.status_code == 401
    assert exc.value.body["type"] == "authentication_error"
    assert exc.value.response.json()["src"] == "gpumod-gateway"
    assert get(gw, "/v1/models", key=None)[0] == 401
    assert get(gw, "/health", key=None)[0] == 200
    status, models = get(gw, "/v1/models")  # x-api-key works as well as Bearer
    assert status == 200
    assert [(m["id"], m["gpumod"]["state"]) for m in models["data"]] == [("fake/chat", "stopped")]
    with pytest.raises(openai.NotFoundError) as exc:
        gw.client().chat.completions.create(model="nope", messages=MESSAGES)
    assert "unknown model 'nope'; known: chat, fake/chat" in exc.value.message
    assert exc.value.response.json()["src"] == "gpumod-gateway"
    # nothing was started by refused requests
    assert lifecycle.get_service(store, "chat").state == "stopped"


def test_malformed_requests_get_openai_shaped_errors_and_start_nothing(store, gateway):
    add(store, "chat")
    gw = gateway()

    def post(body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(f"{gw.url}/chat/completions", data=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    deep = b'{"model": "chat", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {b"not json": 400, b'{"model": 5}': 400, b"[1, 2]": 400, b'{"model": ""}': 400,
             deep: 400, b'{"model": "chat", "x": "' + b"a" * (64 << 20) + b'"}': 413}
    for body, code in cases.items():
        status, answer = post(body)
        assert (status, answer["src"]) == (code, "gpumod-gateway"), (body[:40], answer)
    assert lifecycle.get_service(store, "chat").state == "stopped"


@pytest.mark.parametrize("level", ["l1", "l2"])
def test_sleeping_model_wakes_once_for_concurrent_requests(store, gateway, level):
    add(store, "chat", sleep=level, aliases=["assistant"])
    lifecycle.start_service(store, "chat")
    assert lifecycle.sleep(store, "chat").ok
    gw = gateway(refresh=3600)  # only its own view: no background probe
    assert gw.slot("chat").state == "sleeping"
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda m: chat(gw, m), ["chat", "fake/chat", "assistant"] * 2))
    assert answers == ["Echo: hi"] * 6
    wakes = gw.gateway.metrics.activations
    assert [(k, h.count) for k, h in wakes.items()] == [(("chat", "wake", "ok"), 1)]
    assert lifecycle.get_service(store, "chat").state == "running"
    # streaming, usage counted; the other OpenAI routes pass through too
    stream = gw.client().chat.completions.create(model="chat", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Echo: hi"
    assert gw.gateway.metrics.completion_tokens["chat"] > 0
    done = gw.client().completions.create(model="assistant", prompt="say", max_tokens=5)
    assert done.choices[0].text.strip() == "Echo: say"
    resp = gw.client().responses.create(model="chat", input="hello")
    assert resp.output_text
    # a request is counted once its last byte is sent, which the client may see first
    gw.wait_for(lambda: 'gpumod_gateway_requests_total{model="chat",code="200"} 9'
                in get(gw, "/metrics")[1], timeout=5, what="the 9 requests to be counted")
    _status, page = get(gw, "/metrics")
    assert 'gpumod_gateway_activation_seconds_count{model="chat",kind="wake",result="ok"} 1' \
        in page
    # put to sleep behind the gateway's back: the engine's 503 makes it wake and retry
    assert lifecycle.sleep(store, "chat").ok
    assert gw.slot("chat").state == "ready"
    assert chat(gw, "chat") == "Echo: hi"
    assert gw.gateway.metrics.activations[("chat", "wake", "ok")].count == 2


def test_stopped_model_starts_and_idle_ttl_counts_from_the_end_of_requests(store, gateway):
    # 12 words at 0.4 s each: a stream longer than the 2 s TTL
    add(store, "chat", idle_ttl=2, env={"FAKE_VLLM_TOKEN_DELAY": "0.4"})
    gw = gateway()
    client = gw.client()
    began = time.monotonic()
    stream = client.chat.completions.create(
        model="chat", stream=True,
        messages=[{"role": "user", "content": "one two three four five six seven eight"}])
    pieces = []
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        assert gw.slot("chat").state == "ready"  # never put to sleep while in flight
    ended = time.monotonic()
    assert "".join(pieces).startswith("Echo: one two")
    assert ended - began > 3  # longer than the TTL
    assert lifecycle.get_service(store, "chat").state == "running"
    def events() -> list[str]:
        return [r["action"] for r in store.query("SELECT action FROM events WHERE service='chat'")]

    # 'sleeping' is recorded before the sleep request; the event once it is verified
    gw.wait_for(lambda: "sleep" in events(), timeout=15,
                what="the idle TTL to put chat to sleep (verified, through the lifecycle)")
    assert time.monotonic() - ended >= 2
    assert lifecycle.get_service(store, "chat").state == "sleeping"
    assert chat(gw, "chat") == "Echo: hi"  # and woken again on the next request


def test_two_models_that_cannot_share_the_gpu_alternate_in_batches(store, gateway):
    # 0.6 of 24 GiB each: never both at once. `a` sleeps (l1), `b` can only be stopped.
    add(store, "a", util="0.6", env={"FAKE_VLLM_TOKEN_DELAY": "0.05"})
    add(store, "b", util="0.6", sleep="none", env={"FAKE_VLLM_TOKEN_DELAY": "0.05"})
    gw = gateway(queue_wait=60)

    def ask(model: str) -> str:
        stream = gw.client().chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "x y z"}])
        return "".join(c.choices[0].delta.content or "" for c in stream)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["a", "b"] * 4))
    assert answers == ["Echo: x y z"] * 8  # nobody failed, no stream was cut
    evictions = gw.gateway.metrics.evictions
    assert sum(evictions.values()) <= 3, evictions  # batches (A A B B), not per request
    # a model with requests in flight was never evicted: every stream above is whole,
    # and the second model never started beside the first (the fake would have refused).
    states = {lifecycle.get_service(store, n).state for n in ("a", "b")}
    assert "running" in states and states <= {"running", "sleeping", "stopped"}


def test_cannot_fit_engine_failure_and_start_timeout(store, gateway):
    spec = vllm_spec("huge", free_port(), util="0.3").with_(vram_mib=40000)
    lifecycle.add_service(store, spec)
    add(store, "broken", env={"FAKE_VLLM_FAIL": "RuntimeError: CUDA driver exploded"})
    add(store, "slow", env={"FAKE_VLLM_STARTUP_SECONDS": "30"})
    gw = gateway(start_timeout=3)
    with pytest.raises(openai.InternalServerError) as exc:
        chat(gw, "huge")
    assert exc.value.status_code == 503
    assert "needs 40000 MiB on GPU 0" in exc.value.message
    assert exc.value.body["code"] == "model_cannot_fit"
    with pytest.raises(openai.InternalServerError) as exc:
        chat(gw, "broken")
    assert exc.value.status_code == 503 and "CUDA driver exploded" in exc.value.message
    assert exc.value.body["code"] == "engine_failed"
    with pytest.raises(openai.APIStatusError) as exc:
        chat(gw, "slow")
    assert exc.value.status_code == 504 and exc.value.body["code"] == "start_timeout"
    # the failed starts left nothing running, and the records say so
    for name in ("broken", "slow"):
        spec = lifecycle.get_service(store, name)
        assert not lifecycle.runtime(store, spec).alive()
        assert spec.state == "failed" and "its last start failed" in spec.note
    assert lifecycle.get_service(store, "huge").state == "stopped"  # refused before a start


def test_client_disconnect_cancels_upstream_mid_stream_and_while_waking(store, gateway):
    import httpx

    add(store, "chat", env={"FAKE_VLLM_TOKEN_DELAY": "0.3"})
    add(store, "later", env={"FAKE_VLLM_STARTUP_SECONDS": "3"})
    lifecycle.start_service(store, "chat")
    gw = gateway()
    body = {"model": "chat", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 40)}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{gw.url}/chat/completions", json=body, headers=headers,
                      timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["cache-control"] == "no-cache"
        lines = resp.iter_lines()
        next(lines), next(lines)
        assert engine_metrics(store, "chat")["vllm:num_requests_running"] == 1
    # the client left after two chunks: the engine's request is aborted too
    gw.wait_for(lambda: engine_metrics(store, "chat")["vllm:num_requests_running"] == 0,
                timeout=10, what="the engine to drop the abandoned request")
    gw.wait_for(lambda: gw.slot("chat").activity.in_flight == 0, what="in-flight to drop")
    # a client that gives up while its model is still starting
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/chat/completions", headers=headers, timeout=1,
                   json={"model": "later", "messages": MESSAGES})
    gw.wait_for(lambda: gw.gateway.metrics.requests.get(("later", 499)) == 1, timeout=10,
                what="the abandoned request to be counted")
    gw.wait_for(lambda: gw.slot("later").state == "ready", timeout=20, what="later to start")
    assert engine_metrics(store, "later")["vllm:prompt_tokens_total"] == 0  # never forwarded
    assert gw.slot("later").activity.in_flight == 0


def test_a_client_that_leaves_the_queue_does_not_swap_the_gpu_for_nobody(store, gateway):
    import httpx

    # 0.6 of 24 GiB each: `b` must wait for `a`'s stream; its only client gives up
    add(store, "a", util="0.6", env={"FAKE_VLLM_TOKEN_DELAY": "0.3"})
    add(store, "b", util="0.6", sleep="none")
    lifecycle.start_service(store, "a")
    gw = gateway(queue_wait=60)
    stream = gw.client().chat.completions.create(
        model="a", stream=True, messages=[{"role": "user", "content": "w " * 30}])
    next(iter(stream))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   timeout=1, json={"model": "b", "messages": MESSAGES})
    gw.wait_for(lambda: not gw.slot("a").draining_for, timeout=5,
                what="`a` to stop draining for a request that left")
    assert chat(gw, "a", timeout=5) == "Echo: hi"  # served beside the stream, not queued
    assert "".join(c.choices[0].delta.content or "" for c in stream)  # `a` finishes
    gw.wait_for(lambda: gw.gateway.metrics.requests.get(("b", 499)) == 1,
                what="the abandoned request to be counted")
    gw.wait_for(lambda: gw.slot("b").activation is None, what="b's activation to end")
    # nobody waits for `b`: `a` stays up and serves its next request without a wake
    assert lifecycle.get_service(store, "a").state == "running"
    assert lifecycle.get_service(store, "b").state == "stopped"
    assert not gw.slot("a").draining_for
    assert chat(gw, "a") == "Echo: hi"
    assert sum(gw.gateway.metrics.evictions.values()) == 0


def test_a_backend_restarted_with_a_new_key_by_another_command_keeps_working(
        store, gateway, monkeypatch):
    add(store, "chat")
    lifecycle.start_service(store, "chat")
    gw = gateway(refresh=3600)  # no probe in between: the gateway still thinks it is ready
    assert chat(gw, "chat") == "Echo: hi"
    monkeypatch.setenv("PI_API_KEY", "another-backend-key-0123456789")
    lifecycle.restart_service(store, "chat")  # e.g. `gpumod service restart` in a shell
    assert chat(gw, "chat") == "Echo: hi"   # was the engine's 401, until the next start
    with pytest.raises(openai.AuthenticationError):  # the client's own key is still checked
        gw.client(api_key="another-backend-key-0123456789").models.list()


def test_backend_killed_mid_request(store, gateway):
    add(store, "chat", env={"FAKE_VLLM_TOKEN_DELAY": "0.3"})
    lifecycle.start_service(store, "chat")
    gw = gateway(refresh=3600)  # no background probe: the gateway still thinks it is ready
    stream = gw.client().chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}])
    with pytest.raises(openai.APIError) as exc:
        for i, _chunk in enumerate(stream):
            if i == 1:
                os.killpg(lifecycle.get_service(store, "chat").pid, signal.SIGKILL)
    assert "chat died while answering" in str(exc.value)
    # the gateway learns the engine is gone and starts it again on the next request
    gw.wait_for(lambda: gw.slot("chat").state == "stopped", what="the probe after the failure")
    assert chat(gw, "chat") == "Echo: hi"
    # killed while idle, before any probe: the next request gets a clean 502
    os.killpg(lifecycle.get_service(store, "chat").pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(openai.APIStatusError) as exc:
        chat(gw, "chat")
    assert exc.value.status_code == 502 and exc.value.body["code"] == "backend_unreachable"


def test_a_removed_service_answers_404_at_once_not_a_failed_start(store, gateway):
    add(store, "idle")
    add(store, "busy")
    gw = gateway(refresh=3600)  # no background refresh: only the request can notice
    assert chat(gw, "busy") == "Echo: hi"
    lifecycle.remove_service(store, "idle")   # stopped when removed
    lifecycle.remove_service(store, "busy")   # running when removed (remove stops it)
    for model in ("fake/busy", "idle"):  # a refused connection, then a failed start
        with pytest.raises(openai.NotFoundError) as exc:
            chat(gw, model)
        assert exc.value.body["code"] == "model_not_found", exc.value.body
        assert "was removed" in exc.value.message
    assert get(gw, "/v1/models")[1]["data"] == []  # no longer listed, nor routed
    with pytest.raises(openai.NotFoundError):
        chat(gw, "busy")


# -- the records: every change is the lifecycle's ---------------------------------------


def actions(store, name: str) -> list[str]:
    return [r["action"] for r in store.query(
        "SELECT action FROM events WHERE service = ? ORDER BY id", (name,))]


def test_a_start_by_another_command_is_awaited_not_repeated(store, gateway):
    add(store, "chat", env={"FAKE_VLLM_STARTUP_SECONDS": "2"})
    gw = gateway(refresh=3600)  # the gateway still believes chat is stopped
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(lambda: lifecycle.ensure_ready(open_store(), "chat"))
        gw.wait_for(lambda: locks.service_holder("chat") is not None,
                    what="the other command to hold chat")
        assert chat(gw, "chat") == "Echo: hi"
        pid = other.result(timeout=30).pid
    assert actions(store, "chat").count("started") == 1  # one start, the gateway waited
    assert lifecycle.get_service(store, "chat").pid == pid


def test_dependencies_come_up_first_and_stay_up_while_their_dependent_is(store, gateway):
    add(store, "emb", idle_ttl=0.5)
    rag = vllm_spec("rag", free_port(), util="0.3", sleep="l1", depends_on=("emb",))
    lifecycle.add_service(store, rag.with_(extra={"idle_ttl": 4}))
    gw = gateway(refresh=0.5)
    assert chat(gw, "rag") == "Echo: hi"
    started = actions(store, "emb"), actions(store, "rag")
    assert started == (["started"], ["started"])
    assert gw.slot("emb").state == "ready"
    time.sleep(2.5)  # well past emb's TTL: rag is up and calls it, so it stays up
    assert lifecycle.get_service(store, "emb").state == "running"
    gw.wait_for(lambda: "sleep" in actions(store, "rag"), timeout=15, what="rag's TTL")
    gw.wait_for(lambda: "sleep" in actions(store, "emb"), timeout=15,
                what="emb's TTL once rag sleeps")
    # a request for rag wakes both again, emb first
    assert chat(gw, "rag") == "Echo: hi"
    assert actions(store, "emb")[-1] == "wake" and actions(store, "rag")[-1] == "wake"
    assert {lifecycle.get_service(store, n).state for n in ("emb", "rag")} == {"running"}


def test_a_pi_start_deployment_put_to_rest_keeps_its_record(store, gateway):
    # cannot sleep, so the idle action stops it; a deployment's record must stay (the
    # next request starts it again), unlike `pi stop`, which forgets it
    add(store, "dep", sleep="none", idle_ttl=1, origin="pi start")
    gw = gateway()
    assert chat(gw, "dep") == "Echo: hi"
    gw.wait_for(lambda: "stop" in actions(store, "dep"), timeout=15, what="dep's TTL")
    spec = lifecycle.get_service(store, "dep")
    assert spec.state == "stopped" and spec.pid is None
    assert not lifecycle.runtime(store, spec).alive()
    from gpumod.ops.deploy import prune
    from gpumod.ops.states import list_status

    assert prune(store, list_status(store, ["local"])).removed == []  # resting, not dead
    assert chat(gw, "dep") == "Echo: hi"
    assert actions(store, "dep").count("started") == 2
