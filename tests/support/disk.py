"""A full disk for fault tests: a 64 KiB tmpfs mounted on a folder and filled to the last byte."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import cwd_of


@contextlib.contextmanager
def full_tmpfs(folder: Path) -> Iterator[Path]:
    """`folder` on a full 64 KiB tmpfs (skips where no tmpfs can be mounted). Afterwards the
    processes working in it are killed and it is unmounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'fill'}", "bs=1k"],
                       capture_output=True)
        yield folder
    finally:
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if cwd_of(pid).startswith(str(folder)):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
