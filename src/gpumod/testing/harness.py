"""Start and stop fake engines from tests: free ports, waiting for a port, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class FakeVLLM:
    """``python -m gpumod.testing.fake_vllm serve MODEL ARGS`` in its own process group.

    Output goes to ``log_path`` (stdout and stderr together, like a supervisor's log file).
    Use as a context manager; `stop()` sends TERM, then KILL after `grace` seconds.
    """

    def __init__(self, model: str, args: Sequence[str] = (), *, port: int | None = None,
                 env: Mapping[str, str] | None = None, log_path: str | os.PathLike[str],
                 gpu_state: str | os.PathLike[str] | None = None,
                 startup_seconds: float = 0.05) -> None:
        self.port = port if port is not None else free_port()
        self.model = model
        self.log_path = Path(log_path)
        argv = [sys.executable, "-m", "gpumod.testing.fake_vllm", "serve", model,
                "--host", "127.0.0.1", "--port", str(self.port), *args]
        full_env = dict(os.environ)
        full_env.setdefault("FAKE_VLLM_STARTUP_SECONDS", str(startup_seconds))
        if gpu_state is not None:
            full_env["GPUMOD_FAKE_GPU_STATE"] = str(gpu_state)
        full_env.update(env or {})
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 15) -> FakeVLLM:
        """Wait until the port accepts connections; raise with the log if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake vLLM exited {self.proc.returncode}:\n{self.log()}")
            if port_open(self.port):
                return self
            time.sleep(0.02)
        raise TimeoutError(f"fake vLLM not ready in {timeout}s:\n{self.log()}")

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, grace: float = 5) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> FakeVLLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
