"""Integration fixtures: `local` with fake GPUs and the fake vLLM, and a loopback SSH pod."""

from __future__ import annotations

import pytest

from gpumod.hosts.model import GPU
from gpumod.ops import hosts as hostops
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state
from tests.support.cli import run_cli
from tests.support.gpus import fake_gpus_on_path
from tests.support.pods import KEY, MODEL, fake_hf_cache, fake_pod


@pytest.fixture
def local_env(tmp_path, monkeypatch, gpumod_home):
    """local with 2 fake H100s, the fake vllm on PATH, a HF cache holding MODEL."""
    state = fake_gpus_on_path(tmp_path, monkeypatch, ["h100", "h100"])
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("GPUMOD_FAKE_GPU_STATE", str(state))
    hf_home = tmp_path / "hf"
    fake_hf_cache(hf_home, MODEL)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("PI_API_KEY", KEY)
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "0.3")
    store = open_store()
    gpus = [GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
            for g in read_state(state)["gpus"]]
    hostops.update_local(store, gpus, {"nvidia_smi": True}, {})
    env = type("Env", (), {})()
    env.bin_dir, env.state, env.hf_home, env.store, env.home = (bin_dir, state, hf_home, store,
                                                                gpumod_home)
    yield env
    # never leave anything running, whatever the test did
    for row in store.query("SELECT name FROM services"):
        run_cli("stop", row["name"], "--timeout", "2")


@pytest.fixture
def pod(sshd, tmp_path, monkeypatch):
    """The loopback sshd as pod `dc1` with 2 fake H100s (tests.support.pods.fake_pod)."""
    with fake_pod(sshd, tmp_path, monkeypatch) as server:
        yield server


