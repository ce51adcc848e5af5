"""Deployments on a loopback SSH "pod" (real sshd) with the fake vLLM and nvidia-smi there."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from gpumod.ops import hosts as hostops
from gpumod.store.db import open_store
from tests.integration.test_deploy_local import (
    KEY,
    MODEL,
    first_free_port,
    port_listening,
    processes_in,
    ps_args,
    url_port,
)
from tests.support.cli import run_cli
from tests.support.procs import group_members, spawn, wait_for
from tests.support.real import free_port

pytestmark = pytest.mark.sshd


def test_start_list_logs_stop_on_the_pod(pod):
    expected = first_free_port()
    result = run_cli("start", MODEL, "--name", "qwen", "--pod", "dc1")
    assert result.code == 0, result.output
    assert url_port(result.stdout) == expected
    manifest = json.loads((pod.remote_root / "services/qwen/manifest.json").read_text())
    assert manifest["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert manifest["argv"][manifest["argv"].index("--host") + 1] == "0.0.0.0"
    assert KEY not in ps_args()
    assert KEY not in (pod.remote_root / "services/qwen/service.log").read_text()

    (row,) = json.loads(run_cli("list", "--pod", "dc1", "--json").stdout)
    assert (row["state"], row["pod"]) == ("running", "dc1")

    logs = run_cli("logs", "qwen", "-n", "20")
    assert logs.code == 0 and "vLLM API server" in logs.stdout

    stopped = run_cli("stop", "qwen")
    assert stopped.code == 0, stopped.output
    assert not port_listening(expected)
    assert not processes_in(pod.remote_root)


def test_list_is_one_ssh_round_trip_per_host(pod, monkeypatch):
    for i in range(3):
        assert run_cli("start", MODEL, "--name", f"m{i}", "--pod", "dc1", "-q",
                       "--memory", "30%").code == 0
    from gpumod.hosts.transports import ssh

    calls: list = []
    real_run = ssh.SSHTransport.run

    def counting(self, argv, **kwargs):
        calls.append(argv)
        return real_run(self, argv, **kwargs)

    monkeypatch.setattr(ssh.SSHTransport, "run", counting)
    listed = run_cli("list", "--pod", "dc1", "--json")
    assert listed.code == 0
    assert [r["state"] for r in json.loads(listed.stdout)] == ["running"] * 3
    assert len(calls) == 1


def test_pod_down_lists_unreachable_keeps_records_and_stop_fails(pod):
    assert run_cli("start", MODEL, "--name", "q", "--pod", "dc1", "-q").code == 0
    pod.stop()
    listed = run_cli("list", "--pod", "dc1", "--json")
    assert listed.code == 5
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "unreachable"
    assert "could not reach dc1" in listed.stderr
    pruned = run_cli("list", "--pod", "dc1", "--prune")
    assert pruned.code == 5
    stopped = run_cli("stop", "q")
    assert stopped.code == 5
    logs = run_cli("logs", "q", "-n", "5")
    assert logs.code == 5
    assert "could not read the log" in logs.stderr
    assert "hint: check the pod is up (`pi ssh dc1 true`)" in logs.stderr
    # gpumod's vocabulary says the same thing with the same exit code
    services = run_cli("service", "list", "--pod", "dc1", prog="gpumod")
    assert services.code == 5 and "unreachable" in services.stdout
    one = run_cli("service", "status", "q", prog="gpumod")
    assert one.code == 5 and "state: unreachable" in one.stdout
    assert len(json.loads(run_cli("list", "--all-pods", "--json").stdout)) == 1
    pod.start()
    assert run_cli("stop", "q").code == 0
    assert json.loads(run_cli("list", "--all-pods", "--json").stdout) == []


def test_engine_failure_on_pod_shows_its_error_and_leaves_nothing(pod):
    # the fake reads FAKE_VLLM_FAIL from its environment: set it through the pod's shim
    shim = pod.bin_dir / "vllm"
    shim.write_text(shim.read_text().replace("exec ", "FAKE_VLLM_FAIL='No CUDA GPUs are "
                                             "available' exec ", 1))
    result = run_cli("start", MODEL, "--name", "bad", "--pod", "dc1", "-q")
    assert result.code == 7
    assert "No CUDA GPUs are available" in result.stderr
    assert not (pod.remote_root / "services/bad").exists()
    assert json.loads(run_cli("list", "--all-pods", "--json").stdout) == []


def test_engine_missing_on_pod(pod):
    (pod.bin_dir / "vllm").unlink()
    result = run_cli("start", MODEL, "--name", "x", "--pod", "dc1")
    assert result.code == 7
    assert "vllm is not installed on pod dc1" in result.stderr


def test_port_map_changes_the_url(pod):
    store = open_store()
    hostops.set_port_map(store, "dc1", {str(first_free_port()): "203.0.113.7:40123"}, None)
    result = run_cli("start", MODEL, "--name", "mapped", "--pod", "dc1", "-q")
    assert result.code == 0, result.output
    assert "http://203.0.113.7:40123/v1" in result.stdout


def test_tunnel_forwards_a_local_port_to_the_service(pod):
    assert run_cli("start", MODEL, "--name", "t", "--pod", "dc1", "-q").code == 0
    local = free_port()
    proc = spawn("pi", "tunnel", "t", "--local-port", str(local))
    try:
        import httpx

        deadline = time.monotonic() + 20
        while not port_listening(local) and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = httpx.get(f"http://127.0.0.1:{local}/v1/models",
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["data"][0]["id"] == MODEL
        assert len(group_members(proc.pid)) == 2  # the CLI and its ssh
        proc.terminate()  # SIGTERM to the CLI alone: it must take its ssh child along
        assert proc.wait(timeout=15) == 130
        wait_for(lambda: not group_members(proc.pid), 5, "the ssh child to exit")
        assert not port_listening(local)
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_a_killed_tunnel_takes_its_ssh_along(pod):
    """SIGKILL reaches no handler: the kernel stops the ssh child (PR_SET_PDEATHSIG), so
    no forward outlives `pi tunnel`."""
    assert run_cli("start", MODEL, "--name", "t", "--pod", "dc1", "-q").code == 0
    local = free_port()
    proc = spawn("pi", "tunnel", "t", "--local-port", str(local))
    try:
        wait_for(lambda: port_listening(local), 20, "the tunnel's local port")
        assert len(group_members(proc.pid)) == 2  # the CLI and its ssh
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not group_members(proc.pid), 5, "the ssh child to exit")
        assert not port_listening(local)
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_tunnel_to_a_local_service_is_refused(pod, monkeypatch, tmp_path):
    result = run_cli("tunnel", "nothing")
    assert result.code == 3
