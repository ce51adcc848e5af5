"""What went wrong with the database, in one line naming the file: typed errors for SQLite's.

A damaged file (garbage, truncated, a dropped table) is a ConfigError (exit 2) with the
way out; a lock another process holds past the wait is a ConflictError (exit 4) naming
that process. The file is never touched: nothing already stored is lost by reporting.
Errors that mean a bug (IntegrityError, ProgrammingError) stay as they are.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from gpumod.errors import ConfigError, ConflictError, GpumodError

_DAMAGED = ("file is not a database", "malformed", "no such table", "no such column",
            "corrupt")


def lock_timeout(path: Path, waited: float) -> ConflictError:
    return ConflictError(f"the database {path} is locked by {lock_holder(path)} "
                         f"(waited {waited:.0f} s)",
                         hint="let that command finish, or stop it, then run this again")


def is_locked(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return type(exc) is sqlite3.OperationalError and ("locked" in text or "busy" in text)


def translate(exc: sqlite3.Error, path: Path, *, waited: float = 0) -> GpumodError | None:
    """The typed error for an SQLite failure on the store at `path`, or None (a bug)."""
    if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
        return None
    text = str(exc)
    low = text.lower()
    if is_locked(exc):
        return lock_timeout(path, waited)
    if "disk is full" in low:
        return ConfigError(f"no space left for the database {path}",
                           hint="free some space on that disk, then run this again")
    if "readonly" in low or "read-only" in low:
        return ConfigError(f"the database {path} is read-only",
                           hint=f"check the permissions of {path} and its folder")
    if "unable to open" in low:
        return ConfigError(f"cannot open the database {path}: {text}",
                           hint=f"check that {path.parent} exists and is writable")
    if any(word in low for word in _DAMAGED) or type(exc) is sqlite3.DatabaseError:
        return ConfigError(f"the database {path} is damaged or not gpumod's: {text}",
                           hint=f"move it aside (mv {path} {path}.broken) and run "
                                "`gpumod init` to start a new one; pods are set up again "
                                "with `pi pods setup`")
    return ConfigError(f"the database {path} failed: {text}",
                       hint=f"check the disk that holds {path}")


def lock_holder(path: Path) -> str:
    """'pid 123 (gpumod service add x)' for the process holding the write lock, from
    /proc/locks (SQLite takes POSIX locks on the file and, in WAL mode, its -shm)."""
    inodes: set[int] = set()
    for candidate in (path, Path(f"{path}-shm")):
        try:
            inodes.add(os.stat(candidate).st_ino)
        except OSError:
            continue
    pids: list[int] = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 00:2e:5678 120 120" (a blocked waiter has "->")
        if len(fields) < 6 or "->" in fields or fields[1] != "POSIX" or fields[3] != "WRITE":
            continue
        try:
            pid, inode = int(fields[4]), int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode in inodes and pid not in (os.getpid(), -1) and pid not in pids:
            pids.append(pid)
    if not pids:
        return "another process"
    return ", ".join(f"pid {pid}{_command(pid)}" for pid in pids[:3])


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [a.decode(errors="replace") for a in argv if a]
    if len(words) > 2 and words[1] == "-m":  # python -m gpumod.cli.main ...
        words = words[2:]
    words[0:1] = [os.path.basename(words[0])] if words else []
    text = " ".join(" ".join(words).split())
    return f" ({text[:60]})" if text else ""
