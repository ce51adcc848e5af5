"""Fixtures for the front-end tests: fake GPUs on PATH, services and modes in the store."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.testing.fake_nvidia_smi import write_state
from gpumod.testing.shims import install_shims

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "tests" / "fixtures" / "planner" / "configs"


def install_fake_gpus(tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One fake H100 answered by the fake nvidia-smi (and a fake `vllm`), first on PATH."""
    write_state(state, ["h100"])
    bin_dir = install_shims(tmp_path / "bin", gpu_state=state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return state


@pytest.fixture
def fake_gpus(tmp_path: Path, fake_gpu_state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """install_fake_gpus as a fixture. Returns the state file."""
    return install_fake_gpus(tmp_path, fake_gpu_state, monkeypatch)


def model_folder(tmp_path: Path, config: str = "Qwen__Qwen3-8B.json") -> Path:
    """A model folder with just a config.json (what the planner reads first)."""
    folder = tmp_path / "models" / config.removesuffix(".json")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / config, folder / "config.json")
    return folder


def register_gpu(store, index: int = 0, memory_mib: int = 81559,
                 name: str = "NVIDIA H100 80GB HBM3", host: str = "local") -> None:
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO gpus (host, idx, uuid, name, memory_mib) "
                   "VALUES (?,?,?,?,?)", (host, index, f"GPU-test-{index}", name, memory_mib))


def define_service(store, spec: ServiceSpec) -> ServiceSpec:
    services_table.insert(store, spec)
    return spec


def define_mode(store, name: str, services: list[str], host: str = "local") -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO modes (name, host) VALUES (?, ?)", (name, host))
        db.executemany("INSERT INTO mode_services (mode, service, position) VALUES (?,?,?)",
                       [(name, s, i) for i, s in enumerate(services)])


def structured(result) -> dict:
    """A tool result's JSON: the structured content, else the text parsed as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)
