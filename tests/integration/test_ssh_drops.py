"""The pod's sshd dies in the middle of a command: every front end says "unreachable" (exit 5).

ssh multiplexes over one master connection; when the pod's sshd is killed the client exits
255 with no message at all. That used to read as "the remote command exited with 255": state
unknown with exit 0 (`pi list`, `gpumod service status`) or a failed command with exit 6
(`pi stop`). Each case here kills the real loopback sshd while the command runs on it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.pods import MODEL, fake_pod

pytestmark = pytest.mark.sshd


@pytest.fixture
def pod(sshd, tmp_path, monkeypatch):
    with fake_pod(sshd, tmp_path, monkeypatch) as server:
        yield server
        for shim in ("curl", "python3"):  # hang_probe_on's, before the services are stopped
            (sshd.bin_dir / shim).unlink(missing_ok=True)


def hang_probe_on(pod, marker: Path) -> None:
    """The status probe's HTTP client hangs on the pod (after leaving a marker)."""
    for shim in ("curl", "python3"):
        path = pod.bin_dir / shim
        path.write_text(f"#!/bin/sh\n: > {marker}\nexec sleep 60\n")
        path.chmod(0o755)


def kill_sshd_when(pod, marker: Path, *, delay: float = 0.0) -> threading.Thread:
    """Kill the pod's sshd (listener and every session) once `marker` exists."""
    def watch() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        pod.stop()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sshd_killed_during_list_is_unreachable_exit_5(pod, tmp_path):
    started = run_cli("start", MODEL, "--name", "q", "--pod", "dc1", "-q")
    assert started.code == 0, started.output
    marker = tmp_path / "probing"
    hang_probe_on(pod, marker)
    killer = kill_sshd_when(pod, marker)
    listed = run_cli("list", "--pod", "dc1", "--json")
    killer.join()
    assert listed.code == 5, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "unreachable"
    assert "remote command exited with 255" not in listed.stderr
    assert run_cli("list", "--all-pods", "--json").code == 5  # and the record is kept
    assert [r["name"] for r in json.loads(run_cli("list", "--all-pods", "--json").stdout)] == ["q"]


def test_sshd_killed_during_service_status_is_unreachable_exit_5(pod, tmp_path):
    started = run_cli("start", MODEL, "--name", "q", "--pod", "dc1", "-q")
    assert started.code == 0, started.output
    marker = tmp_path / "probing"
    hang_probe_on(pod, marker)
    killer = kill_sshd_when(pod, marker)
    status = run_cli("service", "status", "q", prog="gpumod")
    killer.join()
    assert status.code == 5, status.output
    assert "state: unreachable" in status.stdout


def test_sshd_killed_during_stop_is_unreachable_exit_5_and_keeps_the_record(pod, tmp_path):
    # an engine that ignores SIGTERM keeps the stop script waiting on the pod
    shim = pod.bin_dir / "vllm"
    shim.write_text(shim.read_text().replace("exec ", "FAKE_VLLM_IGNORE_TERM=1 exec ", 1))
    started = run_cli("start", MODEL, "--name", "q", "--pod", "dc1", "-q")
    assert started.code == 0, started.output
    marker = tmp_path / "stopping"
    stopper = threading.Thread(target=lambda: (time.sleep(1.5), marker.touch()), daemon=True)
    stopper.start()
    killer = kill_sshd_when(pod, marker)
    stopped = run_cli("stop", "q", "--timeout", "20")
    killer.join()
    assert stopped.code == 5, stopped.output
    assert "remote command exited with 255" not in stopped.stderr
    pod.start()
    (row,) = json.loads(run_cli("list", "--pod", "dc1", "--json").stdout)
    assert row["name"] == "q"  # not forgotten: the engine may still run
    assert run_cli("stop", "q", "--timeout", "1").code == 0
