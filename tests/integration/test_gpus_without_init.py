"""GPUs are found without `gpumod init`, and a GPU engine never runs with none.

A fake GPU box: the fake nvidia-smi (two H100s) and the fake vLLM on PATH, a fresh
GPUMOD_HOME where `gpumod init` never ran. Every path that places a service reads the
host's GPUs (ops.inventory): service add/start, mode switch, `pi start`, simulate, the
front ends' operations (MCP, TUI, `gpumod plan` call ops.api).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpumod.ops import api, inventory, lifecycle, modes
from gpumod.ops import hosts as hostops
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state, register_process
from tests.support.cli import run_cli
from tests.support.pods import fake_hf_cache
from tests.support.real import free_port, tiny_gguf
from tests.support.services import fake_host, stop_all

H100_MIB = 81559
ARGS = "--gpu-memory-utilization 0.2 --max-model-len 1024"


@pytest.fixture
def box(tmp_path, monkeypatch):
    state = fake_host(tmp_path, monkeypatch, gpus=("h100", "h100"))
    store = open_store()
    assert hostops.get_host(store, "local").gpus == ()  # nothing recorded: no init ran
    yield store, state
    stop_all(store)


@pytest.fixture
def holder():
    """A real process the fake nvidia-smi can show holding GPU memory."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def gpumod(*args: str):
    return run_cli(*args, prog="gpumod")


def recorded_gpus(store) -> list[tuple[int, str, int]]:
    return [(g.index, g.name, g.memory_mib) for g in hostops.get_host(store, "local").gpus]


def manifest_env(name: str) -> dict[str, str]:
    home = os.environ["GPUMOD_HOME"]
    with open(os.path.join(home, "services", name, "manifest.json")) as fh:
        return json.load(fh)["env"]


def test_service_add_and_start_on_a_fresh_gpu_box_gets_a_gpu(box):
    store, state = box
    added = gpumod("service", "add", "x", "--engine", "vllm", "--model", "fake/x",
                   "--port", str(free_port()), "--args", ARGS)
    assert added.code == 0, added.output
    assert "GPU 0" in added.stdout
    assert recorded_gpus(store) == [(0, "NVIDIA H100 80GB HBM3", H100_MIB),
                                    (1, "NVIDIA H100 80GB HBM3", H100_MIB)]
    assert lifecycle.get_service(store, "x").gpus == (0,)

    started = gpumod("service", "start", "x", "--timeout", "60")
    assert started.code == 0, started.output
    assert manifest_env("x")["CUDA_VISIBLE_DEVICES"] == "0"
    # the engine really holds memory on that GPU (the fake vLLM registers with nvidia-smi)
    spec = lifecycle.get_service(store, "x")
    held = [p for p in read_state(state)["processes"] if p["pid"] == spec.pid]
    gpu0 = read_state(state)["gpus"][0]["uuid"]
    assert held and held[0]["gpu_uuid"] == gpu0


def test_a_definition_without_gpus_gets_the_freest_gpu_at_start(box, holder):
    store, state = box
    # defined where no GPU was known (an old record, or added before the driver worked)
    lifecycle.add_service(store, ServiceSpec("y", "local", "vllm", "fake/y", free_port(),
                                             args=tuple(ARGS.split())))
    assert lifecycle.get_service(store, "y").gpus == ()
    # another program holds 60 GiB on GPU 0: the freest GPU is 1
    register_process(state, holder, "python3", [0], 60 * 1024)
    lines: list[str] = []
    assert lifecycle.start_service(store, "y", timeout=60, progress=lines.append) == ["y"]
    assert lifecycle.get_service(store, "y").gpus == (1,)
    assert manifest_env("y")["CUDA_VISIBLE_DEVICES"] == "1"
    assert any("placed on GPU 1" in line for line in lines), lines
    assert len(recorded_gpus(store)) == 2


def test_mode_switch_without_init_starts_on_a_gpu(box):
    store, _ = box
    lifecycle.add_service(store, ServiceSpec("m", "local", "vllm", "fake/m", free_port(),
                                             args=tuple(ARGS.split())))
    modes.create_mode(store, "solo", ["m"], host="local")
    result = modes.switch_mode(store, "solo")
    assert result.ok, result.error
    assert manifest_env("m")["CUDA_VISIBLE_DEVICES"] == "0"
    assert lifecycle.get_service(store, "m").gpus == (0,)


def test_pi_start_without_init_uses_the_gpus_it_finds(box, tmp_path, monkeypatch):
    store, _ = box
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    fake_hf_cache(tmp_path / "hf", model)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PI_API_KEY", "sk-test-0123456789abcdef")
    started = run_cli("start", model, "--name", "q", "-q")
    assert started.code == 0, started.output
    assert "GPUs:      0" in started.stdout
    assert manifest_env("q")["CUDA_VISIBLE_DEVICES"] == "0"
    assert len(recorded_gpus(store)) == 2


def test_a_stale_inventory_is_replaced_and_logged(box):
    store, _ = box
    from gpumod.hosts.model import GPU

    hostops.save_gpus(store, "local", [GPU(0, "GPU-old", "NVIDIA A100-SXM4-40GB", 40960)])
    listed = run_cli("models", "--json")
    assert listed.code == 0, listed.output
    assert json.loads(listed.stdout)["gpus"] == "2x NVIDIA H100 80GB HBM3 80GB"
    assert recorded_gpus(store)[0][1] == "NVIDIA H100 80GB HBM3"
    (event,) = store.query("SELECT detail FROM events WHERE action = 'gpus'")
    assert event["detail"].startswith("1 -> 2 GPU(s)")
    # read again, unchanged: nothing is written
    inventory.refresh(store, hostops.get_host(store, "local"))
    assert len(store.query("SELECT 1 FROM events WHERE action = 'gpus'")) == 1


def test_simulate_and_the_front_ends_read_the_gpus(box):
    store, _ = box
    assert gpumod("service", "add", "s", "--engine", "command", "--model", "srv",
                  "--vram-mib", "2000", "--port", str(free_port()),
                  "--args", "python -m http.server {port}").code == 0
    hostops.save_gpus(store, "local", [])
    # --no-live keeps a recorded inventory, but one with no GPU is read all the same
    out = gpumod("simulate", "--services", "s", "--no-live", "--json")
    assert out.code == 0, out.output
    assert [g["index"] for g in json.loads(out.stdout)["gpus"]] == [0, 1]
    hostops.save_gpus(store, "local", [])
    # what the MCP server, the TUI and `gpumod plan` call
    result = api.simulate_mode(None, add=["s"])
    assert result["fits"] is True
    hostops.save_gpus(store, "local", [])
    estimate = api.model_estimate(str(tiny_gguf()), engine="llamacpp")
    assert "H100" in estimate["gpu"], estimate["gpu"]
    assert len(recorded_gpus(store)) == 2


def test_a_failing_nvidia_smi_keeps_the_recorded_gpus(box, monkeypatch, tmp_path):
    store, _ = box
    inventory.refresh(store, hostops.get_host(store, "local"))
    assert len(recorded_gpus(store)) == 2
    # the driver stops answering (the fake exits 9 like nvidia-smi without a driver)
    monkeypatch.setenv("GPUMOD_FAKE_GPU_STATE", str(tmp_path / "gone.json"))
    for shim in ("nvidia-smi", "vllm"):
        path = tmp_path / "bin" / shim
        path.write_text(path.read_text().replace(str(tmp_path / "gpus.json"),
                                                 str(tmp_path / "gone.json")))
    reading = inventory.read(store, hostops.get_host(store, "local"))
    assert reading.usage is None and "GPUs not read" in reading.note
    assert len(recorded_gpus(store)) == 2


def test_no_gpu_host_refuses_vllm_in_one_line_and_runs_llamacpp_on_the_cpu(monkeypatch,
                                                                          tmp_path):
    # no nvidia-smi at all: PATH without it
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    store = open_store()
    lifecycle.add_service(store, ServiceSpec("v", "local", "vllm", "fake/v", free_port()))
    started = gpumod("service", "start", "v")
    assert started.code != 0, started.output
    assert started.stderr.splitlines()[0] == (
        "error: v did not start: vllm needs a GPU and local has none "
        "(nvidia-smi lists no GPU there)")
    assert started.stderr.splitlines()[1].startswith("hint: ")
    assert lifecycle.get_service(store, "v").state in ("failed", "stopped")
    # llama.cpp may run on the CPU, and says so
    spec = ServiceSpec("l", "local", "llamacpp", "/models/x.gguf", free_port())
    lines: list[str] = []
    kept, host = inventory.ensure_gpus(store, spec, hostops.get_host(store, "local"), None,
                                       progress=lines.append)
    assert kept.gpus == () and host.gpus == ()
    assert lines == ["l: local has no GPU: llamacpp runs on the CPU"]


def test_the_watch_loop_restarts_a_crashed_service_on_a_gpu(box):
    import signal

    from gpumod.ops import services as records
    from gpumod.ops.watch import Policy, Watcher

    store, _ = box
    lifecycle.add_service(store, ServiceSpec("w", "local", "vllm", "fake/w", free_port(),
                                             args=tuple(ARGS.split())))
    lifecycle.start_service(store, "w", timeout=60)
    old = lifecycle.get_service(store, "w").pid
    records.save_gpus(store, "w", [])  # a record from before the GPUs were known
    os.killpg(old, signal.SIGKILL)
    lines: list[str] = []
    Watcher(store, "local", policy=Policy(fail_threshold=1, backoff_base=0),
            log=lines.append).round()
    restarted = lifecycle.get_service(store, "w")
    assert restarted.state == "running" and restarted.pid != old, lines
    assert restarted.gpus == (0,)
    assert manifest_env("w")["CUDA_VISIBLE_DEVICES"] == "0"
