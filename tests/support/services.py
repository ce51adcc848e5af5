"""Services on fake GPUs: `local` with the fake vLLM on PATH, vLLM specs, stopping them all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


@contextlib.contextmanager
def chat_service(port: int) -> Iterator[str]:
    """`chat` on `local`: vLLM (the fake, with fake GPUs on PATH) serving Qwen/Qwen3-8B on
    GPU 0 of a registered H100 with 0.3 of its memory, sleep l1; defined, not started.
    Stopped afterwards, whatever the test did."""
    from gpumod.ops import api as bridge
    from gpumod.store.db import open_store
    from tests.support.store import define_service, register_gpu

    store = open_store()
    register_gpu(store)
    define_service(store, ServiceSpec("chat", "local", "vllm", "Qwen/Qwen3-8B", port, gpus=(0,),
                                      args=("--max-model-len", "4096",
                                            "--gpu-memory-utilization", "0.3"),
                                      sleep_mode="l1"))
    try:
        yield "chat"
    finally:
        try:
            bridge.service_stop("chat")
        except Exception:
            pass
