"""`gpumod gateway start` on this machine: supervised, outlives the CLI, status, stop."""

from __future__ import annotations

import json
import os
import subprocess

import openai
import pytest

from gpumod.ops import lifecycle
from gpumod.store.db import open_store
from tests.support.cli import run_cli
from tests.support.real import free_port
from tests.support.services import fake_host, stop_all, vllm_spec

KEY = "local-gateway-key-0123456789"


@pytest.fixture
def store(tmp_path, monkeypatch):
    fake_host(tmp_path, monkeypatch)
    monkeypatch.setenv("PI_API_KEY", KEY)
    st = open_store()
    yield st
    run_cli("gateway", "stop")
    stop_all(st)


def test_start_status_stop(store, gpumod_home):
    lifecycle.add_service(store, vllm_spec("chat", free_port(), sleep="l1").with_(
        extra={"idle_ttl": 600}))
    port = free_port()
    result = run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                     "--idle-ttl", "1h", "-q")
    assert result.code == 0, result.output
    url = f"http://127.0.0.1:{port}/v1"
    assert f"gateway on local is up: {url}" in result.stdout
    pid = int((gpumod_home / "gateway/service.pid").read_text())
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    assert "gpumod.gateway serve" in ps.stdout and KEY not in ps.stdout
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model="chat",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Echo: hi"
    status = run_cli("gateway", "status", "--json")
    data = json.loads(status.stdout)
    assert data["state"] == "running" and data["url"] == url
    assert [(m["name"], m["state"], m["ttl_s"]) for m in data["models"]] == \
        [("chat", "ready", 600.0)]
    table = run_cli("gateway", "status")
    assert "chat" in table.stdout and "10m" in table.stdout and "ready" in table.stdout
    assert f"gateway on local: {url}" in run_cli("list").output
    # a second start restarts it (new routes), on the same record
    again = run_cli("gateway", "start", "--port", str(port), "--supervisor", "process", "-q")
    assert again.code == 0, again.output
    assert int((gpumod_home / "gateway/service.pid").read_text()) != pid
    stopped = run_cli("gateway", "stop")
    assert stopped.code == 0 and "stopped the gateway on local" in stopped.stdout
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert lifecycle.get_service(store, "chat").state == "running"  # its models keep running


def test_a_killed_gateway_shows_as_crashed_and_starts_again(store, gpumod_home):
    import os
    import signal

    port = free_port()
    assert run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                   "-q").code == 0
    pid = int((gpumod_home / "gateway/service.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = __import__("time").monotonic() + 10
    while subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0:
        assert __import__("time").monotonic() < deadline
    status = json.loads(run_cli("gateway", "status", "--json").stdout)
    assert status["state"] == "crashed" and "service.log" in status["detail"]
    again = run_cli("gateway", "start", "--port", str(port), "--supervisor", "process", "-q")
    assert again.code == 0, again.output
    assert json.loads(run_cli("gateway", "status", "--json").stdout)["state"] == "running"


def test_gateway_start_fails_cleanly_when_its_port_is_taken(store):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("gateway", "start", "--port", str(port), "--supervisor", "process")
    assert result.code == 4 and "taken by another program" in result.stderr
    assert run_cli("gateway", "status").stdout.startswith("gateway on local: not started")


def test_gateway_run_drains_in_flight_requests_on_sighup(store):
    # a closed terminal sends SIGHUP to `gateway run`: like Ctrl+C or SIGTERM, requests in
    # flight finish (uvicorn alone drains on SIGINT/SIGTERM only), then exit 130
    import signal
    import time

    from tests.support.procs import spawn, wait_for

    lifecycle.add_service(store, vllm_spec("chat", free_port()).with_(
        env={"FAKE_VLLM_TOKEN_DELAY": "0.2"}))
    lifecycle.start_service(store, "chat")
    port = free_port()
    proc = spawn("gpumod", "gateway", "run", "--port", str(port))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)

    def up() -> bool:
        try:
            client.models.list()
            return True
        except openai.APIConnectionError:
            return False

    wait_for(up, 30, "the gateway to answer", proc=proc)
    stream = client.chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}])
    chunks = iter(stream)
    next(chunks)
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    with pytest.raises(openai.APIConnectionError):  # no new requests once it drains
        client.models.list()
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.endswith("h"), text  # the stream was not cut
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Unclosed client session" not in err  # the lifespan shutdown ran


def test_a_restart_on_a_taken_port_keeps_the_running_gateway(store, gpumod_home):
    """`gateway start` again on a port another program holds: refused before the running
    gateway is stopped (it used to be stopped first, leaving the user with none)."""
    import socket

    port = free_port()
    assert run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                   "-q").code == 0
    pid = int((gpumod_home / "gateway/service.pid").read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        result = run_cli("gateway", "start", "--port", str(busy_port), "--supervisor",
                         "process")
    assert result.code == 4, result.output
    assert f"port {busy_port} on local is taken by another program" in result.stderr
    assert f"the running one (port {port}) was left as it is" in result.stderr
    # the refused restart touched nothing: same process, same record, still answering
    assert int((gpumod_home / "gateway/service.pid").read_text()) == pid
    status = json.loads(run_cli("gateway", "status", "--json").stdout)
    assert status["state"] == "running" and status["port"] == port
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    assert client.models.list().data == []
    # the same port again is the gateway's own: a plain restart
    again = run_cli("gateway", "start", "--port", str(port), "--supervisor", "process", "-q")
    assert again.code == 0, again.output


def test_a_gateway_killed_while_it_starts_a_model_leaves_records_that_tell_the_truth(
        store, gpumod_home):
    # the start runs in the gateway's worker thread; SIGKILL ends the gateway mid-way
    import signal
    import socket
    import threading
    import time

    lifecycle.add_service(store, vllm_spec("chat", free_port()).with_(
        env={"FAKE_VLLM_STARTUP_SECONDS": "3"}))
    port = free_port()
    assert run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                   "-q").code == 0
    pid = int((gpumod_home / "gateway/service.pid").read_text())
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    failed: list[Exception] = []

    def ask() -> None:
        try:
            client.chat.completions.create(model="chat",
                                           messages=[{"role": "user", "content": "hi"}])
        except openai.APIConnectionError as exc:
            failed.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 20
    while lifecycle.get_service(open_store(), "chat").state != "starting":
        assert time.monotonic() < deadline, "the gateway never began the start"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    asker.join(30)
    assert failed  # the client saw the gateway go
    # killed before or after the engine was launched: once its load time has passed,
    # either the engine runs and the listing says so, or none runs and it says crashed
    # (no engine without a record, no record claiming a dead engine)
    time.sleep(5)
    listed = json.loads(run_cli("list", "--json").stdout)[0]
    try:
        socket.create_connection(("127.0.0.1", listed["port"]), timeout=2).close()
        port_open = True
    except OSError:
        port_open = False
    if listed["state"] == "running":
        assert listed["process"] == "running" and port_open
        assert subprocess.run(["kill", "-0", str(listed["pid"])]).returncode == 0
    else:
        assert listed["state"] == "crashed" and listed["process"] == "stopped", listed
        assert not port_open
    # a restarted gateway adopts it and answers
    assert run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                   "-q").code == 0
    reply = client.chat.completions.create(model="chat",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Echo: hi"
    assert lifecycle.get_service(store, "chat").state == "running"


def test_gateway_run_on_a_taken_port_is_a_conflict_not_not_found(store):
    """uvicorn exits 3 when it cannot bind, which reads as "not found": the port is
    checked first, exit 4 with the project's error shape."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("gateway", "run", "--port", str(port), prog="gpumod")
    assert result.code == 4, result.output
    assert result.stderr.splitlines() == [
        f"error: port {port} on local is taken by another program",
        "hint: give the gateway another --port"]
