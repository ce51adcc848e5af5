"""Faithful fakes for tests: a fake `nvidia-smi` and a fake vLLM server.

- `gpumod.testing.fake_nvidia_smi`: answers nvidia-smi's CSV/list/table formats from a JSON
  state file (env `GPUMOD_FAKE_GPU_STATE`); processes register their GPU memory there.
- `gpumod.testing.fake_vllm`: `python -m gpumod.testing.fake_vllm serve MODEL [flags]`, an
  OpenAI-compatible server with vLLM's flags, log lines, API-key check, sleep endpoints.
- `gpumod.testing.shims.install_shims(bin_dir)`: `vllm` and `nvidia-smi` executables for PATH.
"""

from gpumod.testing.fake_nvidia_smi import (
    PRESETS,
    STATE_ENV,
    read_state,
    register_process,
    unregister_process,
    update_process,
    write_state,
)
from gpumod.testing.shims import install_shims

__all__ = [
    "PRESETS",
    "STATE_ENV",
    "install_shims",
    "read_state",
    "register_process",
    "unregister_process",
    "update_process",
    "write_state",
]
