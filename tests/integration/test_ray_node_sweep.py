"""Stopping a Ray node finds what its dead leader left, and nothing else (real processes).

Ray's own processes rename themselves with setproctitle, which writes "ray::..." over
their environment, so the GPUMOD_RAY_NODE marker cannot be read there; they stay in the
session of the node's launcher (its recorded pid) and work in the node's folder. When the
leader died (OOM, a kill), the stop must still find them, and must leave alone a process
of another session in the same folder and a process of that session elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from gpumod.hosts.model import Host
from gpumod.hosts.transports.local import LocalTransport
from gpumod.ops import ray_nodes
from tests.support.procs import alive


def _session(cwd, script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], cwd=cwd, start_new_session=True,
                            env={"PATH": os.environ["PATH"]})


def test_stop_sweeps_a_dead_leaders_session_in_its_folder_only(tmp_path, gpumod_home):
    host = Host("local", "local")   # its folder is GPUMOD_HOME
    work = gpumod_home / "ray" / "r1" / "work"
    work.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the node: a leader (exec'd `sleep 301`), a child that carries no marker, and one of
    # its session working elsewhere (a recycled session id must not make it ours)
    leader = _session(work, f'(cd "{elsewhere}" && exec sleep 302) & sleep 300 & '
                            'exec sleep 301')
    time.sleep(0.3)

    def member(pattern: str) -> int:
        found = subprocess.run(["pgrep", "-s", str(leader.pid), "-f", pattern],
                               capture_output=True, text=True).stdout.split()
        return int(found[0])

    child, stray = member("^sleep 300$"), member("^sleep 302$")
    neighbour = _session(work, "exec sleep 303")
    try:
        os.kill(leader.pid, signal.SIGKILL)   # the leader dies; its child lives on
        leader.wait(timeout=5)
        assert alive(child)
        node = ray_nodes.RayNode("r1", "local", "worker", "127.0.0.1", 1, "127.0.0.1", 6379,
                                 52365, pid=leader.pid)
        assert ray_nodes.stop(LocalTransport(), host, node, timeout=2) == "not-running"
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "a process of the node's session in its folder survived"
        assert alive(neighbour.pid), "another session's process was killed"
        assert alive(stray), "a process of its session outside its folder was killed"
        assert not (gpumod_home / "ray" / "r1").exists()
    finally:
        for pid in (child, stray, neighbour.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        neighbour.wait(timeout=5)
