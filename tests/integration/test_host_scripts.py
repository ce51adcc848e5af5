"""The fixed host-side scripts, run for real on this machine through LocalTransport."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gpumod.hosts.http import Endpoint
from gpumod.hosts.transports.local import LocalTransport
from gpumod.ops import probe
from gpumod.supervise.base import LaunchPlan, ProcessState
from gpumod.supervise.process import ProcessSupervisor
from tests.support.real import free_port
from tests.support.recorder import recording_server
from tests.support.stub_server import foreign_http_port

pytestmark = pytest.mark.spawns


@pytest.fixture
def foreign_server():
    with foreign_http_port() as port:
        yield port


def plan(tmp_path, argv, name="svc") -> LaunchPlan:
    return LaunchPlan(name, tuple(argv), {"GREETING": "hello world"},
                      service_dir=str(tmp_path / "services" / name))


def test_health_from_another_program_on_the_port_is_not_ours(tmp_path, foreign_server):
    sup = ProcessSupervisor(LocalTransport())
    p = plan(tmp_path, ["sleep", "30"])
    sup.start(p, {})
    try:
        argv = probe.wait_argv(p.service_dir, foreign_server, "/health", "127.0.0.1", 2, [200])
        began = time.monotonic()
        code = subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode
        assert code == 4  # deadline, never "healthy"
        assert time.monotonic() - began >= 0.9  # the deadline has one-second granularity
    finally:
        sup.remove(p, timeout=2)


def test_health_of_our_own_server_is_seen(tmp_path):
    port = free_port()
    sup = ProcessSupervisor(LocalTransport())
    p = plan(tmp_path, ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"])
    sup.start(p, {})
    try:
        argv = probe.wait_argv(p.service_dir, port, "/", "127.0.0.1", 20, [200])
        assert subprocess.run(argv, capture_output=True, check=False).returncode == 0
        found = probe.probe_host(LocalTransport(), [(p.service_dir, port, "/", "127.0.0.1")])
        assert found[p.service_dir].process == "alive"
        assert found[p.service_dir].http == 200
        assert port in probe.listening_ports(LocalTransport())
    finally:
        assert sup.remove(p, timeout=5) in ("stopped", "killed")
    assert port not in probe.listening_ports(LocalTransport())


def test_engine_exit_is_reported_as_exit_3(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    p = plan(tmp_path, ["sh", "-c", "echo 'error: model file is broken'; exit 1"])
    sup.start(p, {})
    argv = probe.wait_argv(p.service_dir, free_port(), "/health", "127.0.0.1", 20, [200])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 3
    assert "model file is broken" in proc.stdout  # the log streamed while waiting
    assert sup.state(p) is ProcessState.CRASHED


def test_supervisor_env_secrets_and_state(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    p = plan(tmp_path, ["sh", "-c", 'echo "$GREETING/${TOKEN:+has-token}"; sleep 30'])
    pid = sup.start(p, {"TOKEN": "s3cret value'quote"})
    try:
        time.sleep(0.3)
        assert sup.state(p) is ProcessState.RUNNING
        assert sup.read_log(p).strip() == "hello world/has-token"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"s3cret" not in cmdline
        with pytest.raises(Exception, match="already running"):
            sup.start(p, {})
    finally:
        sup.stop(p, timeout=2)
    assert sup.state(p) is ProcessState.STOPPED


def test_other_transports_run_the_http_script_on_the_host():
    """A pod's HTTP calls to its services: `python3 -c HTTP_SCRIPT` there, one command."""
    class Counting(LocalTransport):  # stands for a pod's transport: commands on the host
        calls = 0

        def run(self, argv, **kw):  # type: ignore[override]
            Counting.calls += 1
            return super().run(argv, **kw)

    with recording_server() as (port, seen):
        ep = Endpoint(Counting(), port)
        assert ep.request("POST", "/wake_up", timeout=5).status == 200
    assert Counting.calls == 1 and seen == [{"path": "/wake_up", "auth": None, "body": ""}]
