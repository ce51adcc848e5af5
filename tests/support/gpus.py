"""Fake GPUs for tests: the fake nvidia-smi (and a fake `vllm`) first on PATH."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gpumod.testing.fake_nvidia_smi import write_state
from gpumod.testing.shims import install_shims

H100 = ("NVIDIA H100 80GB HBM3", 81559)
RTX4090 = ("NVIDIA GeForce RTX 4090", 24564)


def fake_gpus_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      gpus: Sequence[str | dict[str, Any]] = ("h100",), *,
                      state: Path | None = None) -> Path:
    """Fake nvidia-smi state with `gpus` (names the fake knows, or dicts), answered by the
    shims in tmp_path/bin, first on PATH. Returns the state file."""
    state = write_state(state or tmp_path / "gpus.json", list(gpus))
    bin_dir = install_shims(tmp_path / "bin", gpu_state=state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return state
