"""`gpumod gateway start` on this machine: supervised, outlives the CLI, status, stop."""

from __future__ import annotations

import json
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


def test_a_restart_that_cannot_work_leaves_the_running_gateway_alone(store, gpumod_home):
    """`gateway start` again with a port another program holds, or a supervisor the host
    lacks: refused before the running gateway is stopped (it used to be stopped first,
    and the user was left with none)."""
    import socket

    port = free_port()
    assert run_cli("gateway", "start", "--port", str(port), "--supervisor", "process",
                   "-q").code == 0
    pid = int((gpumod_home / "gateway/service.pid").read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = run_cli("gateway", "start", "--port", str(taken), "--supervisor", "process")
    assert result.code == 4, result.output
    assert f"port {taken} on local is taken by another program" in result.stderr
    assert f"the running one (port {port}) was left as it is" in result.stderr
    status = json.loads(run_cli("gateway", "status", "--json").stdout)
    assert (status["state"], status["port"]) == ("running", port)
    assert int((gpumod_home / "gateway/service.pid").read_text()) == pid
    assert subprocess.run(["kill", "-0", str(pid)]).returncode == 0


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
