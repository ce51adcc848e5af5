"""Shared fixtures: an isolated GPUMOD_HOME per test, and a loopback SSH "pod"."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# A suite started as a background job (`cmd &` in a script) inherits SIGINT ignored, and so
# would every CLI and engine the tests interrupt with Ctrl+C (SIGINT): restore it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def gpumod_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config folder and database."""
    home = tmp_path / "gpumod-home"
    monkeypatch.setenv("GPUMOD_HOME", str(home))
    monkeypatch.delenv("PI_CONFIG_DIR", raising=False)
    monkeypatch.delenv("PI_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from gpumod.store import db

    db._open.clear()
    return home


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator:
    """A real sshd on 127.0.0.1 with its own keys; `.ssh_command` is what a user types."""
    from tests.support.sshd import LoopbackSSHD

    server = LoopbackSSHD(tmp_path / "pod").start()
    try:
        yield server
    finally:
        server.stop()
        _close_masters(server)


def _close_masters(server) -> None:
    import subprocess

    from gpumod.hosts.sshcmd import parse_ssh_command
    from gpumod.hosts.transports.ssh import SSHTransport

    transport = SSHTransport(parse_ssh_command(server.ssh_command))
    subprocess.run([*transport.base_argv(), "-O", "exit", transport.target.destination],
                   capture_output=True, check=False, timeout=10)


@pytest.fixture
def fake_gpu_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Path for the fake nvidia-smi state file (tests fill it)."""
    path = tmp_path / "fake-gpus.json"
    monkeypatch.setenv("GPUMOD_FAKE_GPU_STATE", str(path))
    return path


@pytest.fixture
def fake_gpus(tmp_path: Path, fake_gpu_state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One fake H100 answered by the fake nvidia-smi (and a fake `vllm`), first on PATH.
    Returns the state file."""
    from tests.support.gpus import fake_gpus_on_path

    return fake_gpus_on_path(tmp_path, monkeypatch, ["h100"], state=fake_gpu_state)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start processes of their own (`spawns`) live with the integration tests."""
    unit = Path(__file__).parent / "unit"
    misplaced = [item.nodeid for item in items
                 if item.get_closest_marker("spawns") and item.path.is_relative_to(unit)]
    if misplaced:
        raise pytest.UsageError("marked `spawns` but under tests/unit (move to tests/integration): "
                                + ", ".join(misplaced))


def pytest_report_header(config) -> str:
    return f"GPUMOD_REQUIRE_REAL={os.environ.get('GPUMOD_REQUIRE_REAL', '0')}"
