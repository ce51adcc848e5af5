"""The fake nvidia-smi with real processes: it lists live pids only, its state survives
concurrent writers, and its command line and shim answer like the real tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from gpumod.hosts.gpus import APP_FIELDS, parse_apps_csv
from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.shims import install_shims

pytestmark = pytest.mark.spawns


@pytest.fixture
def state(tmp_path):
    return smi.write_state(tmp_path / "gpus.json", ["h100", "rtx4090"])


@pytest.fixture
def sleeper():
    procs = []

    def start():
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def run(state, *args):
    return smi.run(list(args), str(state))


def test_memory_counts_live_processes_and_reserved(tmp_path, sleeper):
    path = smi.write_state(tmp_path / "s.json", [{"name": "NVIDIA L4", "memory_total_mib": 23034,
                                                  "baseline_used_mib": 5, "reserved_mib": 300}])
    p = sleeper()
    smi.register_process(path, p.pid, "python3", [0], 1000)
    code, out = run(path, "--query-gpu=memory.used,memory.free", "--format=csv,noheader,nounits")
    assert out.strip() == f"1005, {23034 - 300 - 1005}"
    code, out = run(path, f"--query-compute-apps={APP_FIELDS}", "--format=csv,noheader,nounits")
    apps = parse_apps_csv(out)
    assert [(a.pid, a.name, a.used_mib) for a in apps] == [(p.pid, "python3", 1000)]
    code, out = run(path, f"--query-compute-apps={APP_FIELDS}", "--format=csv")
    assert code == 0
    head, row = out.splitlines()
    assert head == "pid, process_name, used_gpu_memory [MiB], gpu_uuid"
    assert row.split(", ")[2] == "1000 MiB"


def test_dead_and_zombie_processes_are_dropped(state, sleeper):
    alive, dead, zombie = sleeper(), sleeper(), sleeper()
    for proc, mib in ((alive, 100), (dead, 200), (zombie, 400)):
        smi.register_process(state, proc.pid, "python3", [0], mib)
    dead.kill()
    dead.wait()
    zombie.kill()  # not reaped: a zombie, which holds no GPU memory
    for _ in range(100):
        with open(f"/proc/{zombie.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        threading.Event().wait(0.01)
    code, out = run(state, "--query-compute-apps=pid,used_memory", "--format=csv,noheader")
    assert out.splitlines() == [f"{alive.pid}, 100 MiB"]
    code, out = run(state, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0")
    assert (code, out.strip()) == (0, "100")


def test_list_and_table(state, sleeper):
    p = sleeper()
    smi.register_process(state, p.pid, "VLLM::EngineCore", [1], 2048)
    code, out = run(state, "-L")
    gpus = json.loads(state.read_text())["gpus"]
    assert out.splitlines() == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {gpus[0]['uuid']})",
        f"GPU 1: NVIDIA GeForce RTX 4090 (UUID: {gpus[1]['uuid']})"]
    code, out = run(state)
    assert code == 0
    assert "Driver Version: 550.54.15" in out
    assert "2048MiB /  24564MiB" in out
    proc_line = next(line for line in out.splitlines() if "VLLM::EngineCore" in line)
    assert str(p.pid) in proc_line and proc_line.endswith("2048MiB |")
    widths = {len(line) for line in out.splitlines()[1:] if line}
    assert widths == {91}


def test_register_update_unregister(state, sleeper):
    p = sleeper()
    smi.register_process(state, p.pid, "python3", [0, 1], [1000, 2000])
    smi.update_process(state, p.pid, 500)
    procs = smi.read_state(state)["processes"]
    assert sorted(x["used_mib"] for x in procs if x["pid"] == p.pid) == [500, 500]
    smi.update_process(state, p.pid, 700, [1])
    mem = [g["used_mib"] for g in smi.gpu_memory(smi.read_state(state))]
    assert mem == [500, 700]
    smi.unregister_process(state, p.pid)
    assert smi.read_state(state)["processes"] == []
    with pytest.raises(ValueError, match="no GPU"):
        smi.register_process(state, p.pid, "python3", [5], 1)
    with pytest.raises(ValueError, match="not registered"):
        smi.update_process(state, p.pid, 1)
    with pytest.raises(ValueError, match="memory figures"):
        smi.register_process(state, p.pid, "python3", [0, 1], [1])
    with pytest.raises(ValueError, match="unknown GPU preset"):
        smi.write_state(state, ["h200-imaginary"])


def test_concurrent_writers_lose_no_update(tmp_path):
    # 8 processes each rewrite "their" GPU's figure 20 times; an unlocked read-modify-write
    # would put a stale figure back on some other GPU.
    state = smi.write_state(tmp_path / "s.json", ["l4"] * 8)
    me = os.getpid()
    smi.register_process(state, me, "pytest", range(8), 0)
    code = (
        "import sys\n"
        "from gpumod.testing.fake_nvidia_smi import update_process\n"
        "path, gpu, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "for i in range(20):\n"
        "    update_process(path, pid, i + 1, [gpu])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state), str(g), str(me)])
             for g in range(8)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert [g["used_mib"] for g in smi.gpu_memory(smi.read_state(state))] == [20] * 8
    assert not list(tmp_path.glob(".s.json.*"))  # no temp files left behind


def test_command_line_and_shim(tmp_path, state):
    bindir = install_shims(tmp_path / "bin with space", gpu_state=state)
    env = {k: v for k, v in os.environ.items() if k != smi.STATE_ENV}
    out = subprocess.run([str(bindir / "nvidia-smi"), "--query-gpu=name", "--format=csv,noheader"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    assert out.stderr == ""
    bad = subprocess.run([str(bindir / "nvidia-smi"), "--nope"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "Invalid combination of input arguments" in bad.stdout
    # without a baked state and without the env: no driver
    plain = install_shims(tmp_path / "plain")
    nodriver = subprocess.run([str(plain / "nvidia-smi")], env=env, capture_output=True,
                              text=True, timeout=30)
    assert nodriver.returncode == 9
    version = subprocess.run([str(plain / "vllm"), "--version"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.strip() == "0.11.0"
