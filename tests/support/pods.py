"""A loopback SSH "pod" with fake GPUs and a Hugging Face cache holding the test model,
recorded as pod `dc1`; and the deployment constants the pod tests share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gpumod.hosts.model import GPU, Host
from gpumod.ops import hosts as hostops
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state, write_state
from gpumod.testing.shims import install_shims
from tests.support.cli import run_cli

KEY = "sk-gpumod-test-9f8e7d6c5b4a"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def fake_hf_cache(hf_home: Path, model: str) -> Path:
    snap = hf_home / "hub" / f"models--{model.replace('/', '--')}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    return snap


def register_pod(store: Any, sshd: Any, name: str, state: Path, hf_home: Path) -> Host:
    gpus = tuple(GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
                 for g in read_state(state)["gpus"])
    host = Host(name=name, kind="ssh", ssh_command=sshd.ssh_command, address="127.0.0.1",
                root=str(sshd.remote_root), engine_env={"hf_cache": str(hf_home)}, gpus=gpus)
    hostops.save_host(store, host, replace=False)
    return hostops.get_host(store, name)


@contextlib.contextmanager
def fake_pod(sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
             gpus: Sequence[str] = ("h100", "h100"),
             stop: Sequence[str] = ("pi", "stop", "{name}", "--timeout", "2")) -> Iterator[Any]:
    """The loopback sshd as pod `dc1` (fake GPUs, MODEL in its HF cache, PI_API_KEY set).

    Afterwards the sshd is started again if the test stopped it, and every service is
    stopped with the command `stop` (`{name}` filled in) so nothing outlives the test."""
    state = tmp_path / "pod-gpus.json"
    write_state(state, list(gpus))
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
        run_cli(*(arg.format(name=row["name"]) for arg in stop[1:]), prog=stop[0])
