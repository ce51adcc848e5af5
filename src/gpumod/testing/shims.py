"""Executable shims that put the fakes on PATH as `vllm` and `nvidia-smi` (and real Ray
as `ray`, for multi-node tests)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from gpumod.testing.fake_nvidia_smi import STATE_ENV


def _write(path: Path, body: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    tmp.chmod(0o755)
    os.replace(tmp, path)


def install_shims(bin_dir: str | os.PathLike[str], *,
                  gpu_state: str | os.PathLike[str] | None = None, ray: bool = False) -> Path:
    """Write `vllm` and `nvidia-smi` into `bin_dir` (created if needed); returns `bin_dir`.

    Both exec this interpreter (`sys.executable`). With `gpu_state`, both shims set and
    export GPUMOD_FAKE_GPU_STATE to that (absolute) path themselves, overriding the caller's
    environment, so they work over SSH where the environment is not forwarded.

    With `ray`, also `ray`: the real Ray CLI of this interpreter (``pip install
    gpumod[ray]``), with the same state file, so the fake vLLM's Ray workers on that
    "pod" see its GPUs.
    """
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    env = ""
    if gpu_state is not None:
        state = shlex.quote(str(Path(gpu_state).resolve()))
        env = f"{STATE_ENV}={state}\nexport {STATE_ENV}\n"
    _write(bin_dir / "vllm", env + f'exec {python} -m gpumod.testing.fake_vllm "$@"\n')
    _write(bin_dir / "nvidia-smi",
           env + f'exec {python} -m gpumod.testing.fake_nvidia_smi "$@"\n')
    if ray:
        _write(bin_dir / "ray", env + f'exec {python} -m ray.scripts.scripts "$@"\n')
    return bin_dir
