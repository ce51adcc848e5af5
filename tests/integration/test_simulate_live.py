"""`gpumod simulate` against the host's live GPU usage (the fake nvidia-smi on `local`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from gpumod.errors import TransportError
from gpumod.hosts.transports.mock import MockTransport
from gpumod.ops.facts import remember as save_cached
from gpumod.planner.facts import facts_from_config
from gpumod.spec import ServiceSpec
from gpumod.testing.fake_nvidia_smi import register_process
from tests.support.cli import run_cli
from tests.support.gpus import fake_gpus_on_path
from tests.support.models import config
from tests.support.store import define_service, register_gpu

GIB = 1024


@pytest.fixture
def procs():
    """Real processes (the fake nvidia-smi only lists live pids); killed afterwards."""
    started: list[subprocess.Popen] = []
    children: list[int] = []  # a SIGKILLed parent cannot kill its child: we do

    def spawn(with_child: bool = False) -> tuple[int, int]:
        """(pid, pid that holds the GPU memory): a child of pid when with_child."""
        code = ("import subprocess, sys, time\n"
                "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                "print(c.pid, flush=True)\ntry:\n    time.sleep(120)\nfinally:\n    c.kill()\n"
                if with_child else "import time; print(0, flush=True); time.sleep(120)")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        started.append(p)
        child = int(p.stdout.readline())
        if child:
            children.append(child)
        return p.pid, (child or p.pid)

    yield spawn
    for p in started:
        p.kill()
        p.wait(timeout=10)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def h100(tmp_path, monkeypatch):
    """An idle fake H100 on `local` (inventory says the same) and three services.

    chat: vLLM with a fixed --gpu-memory-utilization 0.6 (~48 GiB): fits an idle card.
    emb:  a 2.5 GiB command service (in the simulated set).
    old:  a 10 GiB command service (running, never in the simulated set).
    """
    state = fake_gpus_on_path(tmp_path, monkeypatch, ["h100"], state=tmp_path / "gpu-state.json")
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    from gpumod.store.db import open_store

    st = open_store()
    register_gpu(st, 0, uuid="GPU-0")
    save_cached(st, facts_from_config(config("Qwen__Qwen3-8B"), key="Qwen/Qwen3-8B"))
    specs = [
        ServiceSpec("emb", "local", "command", "bge", 8001, vram_mib=2500),
        ServiceSpec("chat", "local", "vllm", "Qwen/Qwen3-8B", 8002,
                    args=("--max-model-len", "16384", "--gpu-memory-utilization", "0.6")),
        ServiceSpec("old", "local", "command", "x", 8003, vram_mib=10 * GIB, sleep_mode="l1"),
    ]
    for s in specs:
        define_service(st, s)
    yield st, state
    st.close()
    from gpumod.store import db as dbmod

    dbmod._open.clear()


def set_pid(st, service: str, pid: int) -> None:
    with st.transaction() as db:
        db.execute("UPDATE services SET pid = ?, state = 'running' WHERE name = ?",
                   (pid, service))


def test_idle_card_fits_live(h100):
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"], data
    assert data["usage"] == "live" and data["gpus"][0]["used_mib"] == 0


@pytest.mark.spawns
def test_another_process_holding_40_gib_makes_it_not_fit(h100, procs):
    _, state = h100
    pid, _ = procs()
    register_process(state, pid, "python3", [0], 40 * GIB)
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--json")
    data = json.loads(out)
    assert code == 8 and not data["fits"] and data["usage"] == "live"
    gpu = data["gpus"][0]
    assert gpu["used_mib"] == 40 * GIB and gpu["over_by_mib"] > 0
    assert gpu["occupied_by"] == [{"label": f"python3 (pid {pid})", "mib": 40 * GIB,
                                   "service": None, "pid": pid}]
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--visual")
    assert code == 8
    assert "usage: live nvidia-smi on local" in out
    assert f"python3 (pid {pid})" in out and "40.0 GiB" in out
    assert "exceeds by" in out and "! over by" in out and "DOES NOT FIT" in out
    # --no-live: the stored inventory (an idle H100) says it fits
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--no-live", "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"] and data["usage"] == "inventory"
    assert data["gpus"][0]["used_mib"] == 0


@pytest.mark.spawns
def test_set_members_are_not_double_counted_but_leavers_are(h100, procs):
    st, state = h100
    emb_pid, emb_gpu_pid = procs(with_child=True)   # memory held by a child of the service
    old_pid, _ = procs()
    assert emb_gpu_pid != emb_pid
    register_process(state, emb_gpu_pid, "python3", [0], 2500)
    register_process(state, old_pid, "python3", [0], 10 * GIB)
    set_pid(st, "emb", emb_pid)
    set_pid(st, "old", old_pid)
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--json")
    data = json.loads(out)
    gpu = data["gpus"][0]
    assert code == 0 and data["usage"] == "live"
    # emb's 2500 MiB (held by its child) is planned, not also counted as in use
    assert gpu["used_mib"] == 10 * GIB
    assert [o["label"] for o in gpu["occupied_by"]] == ["old"]
    assert dict((s["name"], s["mib"]) for s in gpu["services"])["emb"] == 2500
    # the same run without emb in the set: its memory is occupied too
    code, out, _ = run_cli("simulate", "--services", "chat", "--json")
    gpu = json.loads(out)["gpus"][0]
    assert gpu["used_mib"] == 10 * GIB + 2500
    assert {o["label"]: o["mib"] for o in gpu["occupied_by"]} == {"old": 10 * GIB, "emb": 2500}


@pytest.mark.spawns
def test_running_neighbour_that_can_sleep_is_offered(h100, procs):
    st, state = h100
    old_pid, _ = procs()
    register_process(state, old_pid, "python3", [0], 35 * GIB)
    set_pid(st, "old", old_pid)
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--json")
    data = json.loads(out)
    assert code == 8 and not data["fits"]
    kinds = {a["kind"]: a for a in data["alternatives"]}
    assert "sleep" in kinds and kinds["sleep"]["changes"] == {"sleep": ["old"]}


def test_broken_nvidia_smi_falls_back_to_inventory_with_a_note(h100, tmp_path):
    (tmp_path / "gpu-state.json").unlink()          # the fake then fails like a dead driver
    code, out, _ = run_cli("simulate", "--services", "emb,chat", "--json")
    data = json.loads(out)
    assert code == 0 and data["usage"] == "inventory"
    assert data["usage_note"].startswith("live usage unavailable: local: nvidia-smi")
    code, out, _ = run_cli("simulate", "--services", "emb,chat")
    notes = [line for line in out.splitlines() if line.startswith("usage:")]
    assert len(notes) == 1 and "stored GPU inventory (live usage unavailable" in notes[0]


def test_unreachable_host_and_no_nvidia_smi(h100):
    from gpumod.ops.simulate import simulate

    st, _ = h100

    def unreachable(argv, stdin):
        raise TransportError("pod gpu1: ssh: connect to host 10.0.0.9 port 22: timed out")

    r = simulate(st, host="local", services=["emb", "chat"], live=True,
                 transport=MockTransport(unreachable))
    assert r.usage == "inventory" and "timed out" in r.usage_note and r.placement.fits
    r = simulate(st, host="local", services=["emb", "chat"], live=True,
                 transport=MockTransport(lambda argv, stdin: (127, "", "nvidia-smi: not found")))
    assert r.usage == "inventory" and r.usage_note == "no nvidia-smi on local"
    assert r.to_json()["usage"] == "inventory"


@pytest.mark.spawns
def test_ps_failure_still_matches_by_pid(h100, procs):
    """Without `ps`, a set member whose own pid holds the memory is still not double counted."""
    from gpumod.hosts.transports.local import LocalTransport
    from gpumod.ops.simulate import simulate

    st, state = h100
    pid, _ = procs()
    register_process(state, pid, "python3", [0], 2500)
    set_pid(st, "emb", pid)
    local = LocalTransport()

    def handler(argv, stdin):
        if argv[0] == "ps":
            return 1, "", "ps: not found"
        res = local.run(argv, input=stdin, timeout=30)
        return res.returncode, res.stdout, res.stderr

    r = simulate(st, host="local", services=["emb", "chat"], live=True,
                 transport=MockTransport(handler))
    assert r.usage == "live" and r.placement.gpus[0].used_mib == 0
    assert any("matched by pid only" in w for w in r.warnings)
