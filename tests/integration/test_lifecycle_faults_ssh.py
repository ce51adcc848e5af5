"""Faults on a loopback SSH "pod" (real sshd): the connection drops, the pod's disk fills."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.test_deploy_local import MODEL, processes_in
from tests.support.cli import run_cli
from tests.support.disk import full_tmpfs
from tests.support.procs import alive, pid_in, spawn, wait_for

pytestmark = pytest.mark.sshd


def rows(pod_name: str = "dc1") -> list[dict]:
    return json.loads(run_cli("list", "--pod", pod_name, "--json").stdout)


def test_ssh_drop_during_the_health_wait_keeps_the_record_until_confirmed(pod):
    folder = pod.remote_root / "services" / "c2"
    proc = spawn("pi", "start", "srv", "--name", "c2", "--pod", "dc1", "-q", "--engine",
                 "command", "--health-path", "/", "--vllm", "sh", "-c",
                 'sleep 25; exec python3 -m http.server "$0"', "{port}")
    pid = wait_for(lambda: pid_in(folder / "service.pid"), 60, "the engine", proc)
    time.sleep(1.0)
    pod.stop()                       # the pod drops off the network mid-wait
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    assert "pi stop c2" in err       # says how to finish the cleanup
    assert alive(pid)                # nobody could stop it: its record must still exist
    down = rows()
    assert [(r["name"], r["state"]) for r in down] == [("c2", "unreachable")]
    pod.start()
    (row,) = rows()
    assert row["recorded_state"] == "stopping" and row["state"] == "stopping", row
    assert "pi stop c2" in row["detail"]
    stopped = run_cli("stop", "c2")
    assert stopped.code == 0, stopped.output
    assert not alive(pid)
    assert rows() == []
    assert not folder.exists()       # secrets.env went with it


def test_ssh_drop_then_prune_finishes_a_cleanup_whose_engine_is_gone(pod):
    folder = pod.remote_root / "services" / "c3"
    proc = spawn("pi", "start", "srv", "--name", "c3", "--pod", "dc1", "-q", "--engine",
                 "command", "--health-path", "/", "--vllm", "sh", "-c",
                 'sleep 25; exec python3 -m http.server "$0"', "{port}")
    pid = wait_for(lambda: pid_in(folder / "service.pid"), 60, "the engine", proc)
    time.sleep(1.0)                  # into the health wait
    pod.stop()
    proc.communicate(timeout=120)
    assert proc.returncode == 5
    os.killpg(pid, 9)                # the engine dies on its own meanwhile
    pod.start()
    (row,) = rows()
    assert row["state"] == "stopped" and row["recorded_state"] == "stopping", row
    pruned = run_cli("list", "--pod", "dc1", "--prune")
    assert pruned.code == 0 and "pruned c3" in pruned.stderr
    assert rows() == [] and not folder.exists()


@pytest.fixture
def full_pod_disk(pod):
    with full_tmpfs(pod.remote_root / "services") as services:
        yield services


def test_full_disk_on_the_pod_fails_closed(pod, full_pod_disk):
    result = run_cli("start", MODEL, "--name", "full", "--pod", "dc1", "-q")
    assert result.code == 7, result.output
    assert "could not launch full" in result.stderr
    time.sleep(1.0)
    assert not processes_in(pod.remote_root), "the engine ran after a failed write"
    assert rows() == []
