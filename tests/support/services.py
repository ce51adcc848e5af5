"""Services on fake GPUs: `local` with the fake vLLM on PATH, vLLM specs, stopping them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod.spec import ServiceSpec
from tests.support.gpus import fake_gpus_on_path


def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus=("rtx4090",)) -> Path:
    """Fake nvidia-smi state + `vllm`/`nvidia-smi` shims first on PATH, a quick fake vLLM;
    returns the state file."""
    state = fake_gpus_on_path(tmp_path, monkeypatch, gpus)
    monkeypatch.setenv("GPUMOD_FAKE_GPU_STATE", str(state))
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "0.2")
    monkeypatch.setenv("FAKE_VLLM_WEIGHTS_GIB", "0.5")
    return state


def vllm_spec(name: str, port: int, *, host: str = "local", util: str = "0.2",
              sleep: str = "none", depends_on: tuple[str, ...] = (), env: dict | None = None
              ) -> ServiceSpec:
    return ServiceSpec(name=name, host=host, engine="vllm", model=f"fake/{name}", port=port,
                       gpus=(0,), args=("--gpu-memory-utilization", util, "--max-model-len",
                                        "1024"),
                       env=dict(env or {}), sleep_mode=sleep, depends_on=depends_on)


def stop_all(store) -> None:
    from gpumod.ops import lifecycle

    for spec in lifecycle.list_services(store):
        try:
            rt = lifecycle.runtime(store, spec)
            rt.supervisor.stop(rt.plan, timeout=5)
        except Exception:
            pass
