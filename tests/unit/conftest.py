"""Unit tests start no processes of their own.

A test that starts a server, a sleeper, a held engine launch, or the CLI or Python as a
child is marked `spawns` and lives in tests/integration. The guard below fails a unit test
that starts one of those; the short host commands gpumod itself runs through its local
transport (`sh -c` probes, the fake nvidia-smi behind them) are what units exercise.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gpumod.supervise.process import START_SCRIPT

_PROGRAMS = {"gpumod", "pi", "sshd", "llama-server", "sleep", "vllm", "nvidia-smi"}


@pytest.fixture(autouse=True)
def _no_processes_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen, args, *rest, **kwargs) -> None:
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = os.path.basename(os.fsdecode(argv[0]))
        launches = any(START_SCRIPT in str(arg) for arg in argv[1:])
        if (program.startswith("python") or program in _PROGRAMS or launches
                or os.fsdecode(argv[0]) == sys.executable):
            pytest.fail(f"a unit test started {program!r}{' (an engine launch)' if launches else ''}"
                        ": mark it `spawns` and move it to tests/integration", pytrace=False)
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
