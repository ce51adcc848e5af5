"""Faithful fakes for tests: a fake `nvidia-smi` and a fake vLLM server.

- `gpumod.testing.fake_nvidia_smi`: answers nvidia-smi's CSV/list/table formats from a JSON
  state file (env `GPUMOD_FAKE_GPU_STATE`); processes register their GPU memory there.
- `gpumod.testing.fake_vllm`: `python -m gpumod.testing.fake_vllm serve MODEL [flags]`, an
  OpenAI-compatible server with vLLM's flags, log lines, API-key check, sleep endpoints.
- `gpumod.testing.shims.install_shims(bin_dir)`: `vllm` and `nvidia-smi` executables for PATH.

Import from the submodules (this package imports nothing eagerly, so `python -m` on them
stays clean); the common names are also reachable here lazily.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "PRESETS": "fake_nvidia_smi", "STATE_ENV": "fake_nvidia_smi", "read_state": "fake_nvidia_smi",
    "register_process": "fake_nvidia_smi", "update_process": "fake_nvidia_smi",
    "unregister_process": "fake_nvidia_smi", "write_state": "fake_nvidia_smi",
    "gpu_memory": "fake_nvidia_smi", "install_shims": "shims",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
