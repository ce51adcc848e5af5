"""Integration fixtures: `local` with fake GPUs and the fake vLLM, and a loopback SSH pod."""

from __future__ import annotations

import os

import pytest

from gpumod.hosts.model import GPU, Host
from gpumod.ops import hosts as hostops
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state, write_state
from gpumod.testing.shims import install_shims
from tests.integration.test_deploy_local import KEY, MODEL, fake_hf_cache
from tests.support.cli import run_cli


@pytest.fixture
def local_env(tmp_path, monkeypatch, gpumod_home):
    """local with 2 fake H100s, the fake vllm on PATH, a HF cache holding MODEL."""
    bin_dir = tmp_path / "bin"
    state = tmp_path / "gpus.json"
    write_state(state, ["h100", "h100"])
    install_shims(bin_dir, gpu_state=state)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
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


def register_pod(store, sshd, name: str, state, hf_home) -> Host:
    gpus = tuple(GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
                 for g in read_state(state)["gpus"])
    host = Host(name=name, kind="ssh", ssh_command=sshd.ssh_command, address="127.0.0.1",
                root=str(sshd.remote_root), engine_env={"hf_cache": str(hf_home)}, gpus=gpus)
    hostops.save_host(store, host, replace=False)
    return hostops.get_host(store, name)


@pytest.fixture
def pod(sshd, tmp_path, monkeypatch):
    state = tmp_path / "pod-gpus.json"
    write_state(state, ["h100", "h100"])
    install_shims(sshd.bin_dir, gpu_state=state)
    hf_home = tmp_path / "pod-hf"
    fake_hf_cache(hf_home, MODEL)
    monkeypatch.setenv("PI_API_KEY", KEY)
    store = open_store()
    register_pod(store, sshd, "dc1", state, hf_home)
    yield sshd
    if sshd.proc is None:
        sshd.start()
    for row in store.query("SELECT name FROM services"):
        run_cli("stop", row["name"], "--timeout", "2")


