"""Real processes for fault tests: the CLI as a child process, waiting, process checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cli_argv(prog: str, *args: str) -> list[str]:
    """The installed `pi` / `gpumod` entry point of this interpreter's environment."""
    return [str(Path(sys.executable).parent / prog), *args]


def spawn(prog: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real CLI in its own process (signals reach it, not pytest)."""
    return subprocess.Popen(cli_argv(prog, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ if env is None else env),
                            start_new_session=True)


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> object:
    """Poll until predicate() is truthy; AssertionError naming `what` (and the CLI's
    output when `proc` ended early) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the CLI exited {proc.returncode} before {what}: {out}{err}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """pid runs (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_in(path: Path) -> int | None:
    """The pid a pid file names, when it names a live process."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and alive(int(text)) else None


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def cwd_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout` seconds; reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
