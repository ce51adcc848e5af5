"""The lifecycle's locks: fcntl locks on files in $GPUMOD_HOME/locks (freed when a process dies).

Taken in this order, never the other way round (so no two commands deadlock):

1. the host lock: shared by operations on single services (`pi start/stop`, `gpumod
   service start/stop`, sleep, wake, watch), exclusive for a mode switch, which plans
   across the whole host;
2. a service's lock: one transition sequence at a time per service (a start with its
   health wait, a stop); a second caller waits for it, then sees its result;
3. the GPU start slots: engines that measure free memory at start (vLLM) start one at
   a time per GPU, from launch until healthy;
4. the host's admission lock: a short critical section in which the memory of a start
   is admitted and reserved (see gpumod.ops.admission).

An exclusive holder writes who it is into the lock file ("pid N: what"), so a refused
command can say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gpumod import paths, validate
from gpumod.errors import ConflictError

Progress = Callable[[str], None]


def _folder() -> Path:
    folder = paths.ensure_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: float, what: str,
              busy: Callable[[str], Exception], progress: Progress | None = None,
              waiting: str = "") -> Iterator[None]:
    """Hold an fcntl lock on `path`; after `wait` seconds raise busy(holder).

    progress (with `waiting`) is told once when the lock is not free at once.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise busy(_holder(fd)) from None
                if progress is not None and not told and waiting:
                    holder = _holder(fd)
                    progress(waiting + (f" ({holder})" if holder else ""))
                    told = True
                time.sleep(0.1)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {what}".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def host_lock(host: str, *, shared: bool = False, wait: float = 5.0,
              what: str = "a mode switch", progress: Progress | None = None
              ) -> contextlib.AbstractContextManager[None]:
    """Per-host lock: exclusive for mode switches, shared for single-service operations."""
    path = _folder() / f"{validate.name(host, 'pod name')}.lock"

    def busy(holder: str) -> Exception:
        return ConflictError(
            f"another gpumod operation is changing services on {host} "
            f"({holder or 'services are starting or stopping'})",
            hint=f"wait for it to finish, then retry {what}")

    return file_lock(path, shared=shared, wait=wait, what=what, busy=busy, progress=progress,
                     waiting=f"waiting for another gpumod operation on {host}")


def service_lock(name: str, *, wait: float = 5.0, what: str,
                 progress: Progress | None = None) -> contextlib.AbstractContextManager[None]:
    """One transition sequence at a time for a service."""
    path = _folder() / f"service-{validate.name(name, 'service name')}.lock"

    def busy(holder: str) -> Exception:
        return ConflictError(f"{name} is being changed by another gpumod command "
                             f"({holder or 'unknown holder'})",
                             hint=f"wait for it to finish, then retry {what}")

    return file_lock(path, wait=wait, what=what, busy=busy, progress=progress,
                     waiting=f"{name}: waiting for another gpumod command")


def service_holder(name: str) -> str | None:
    """Who changes a service right now ("pid N: what"), or None when nobody does."""
    path = _folder() / f"service-{validate.name(name, 'service name')}.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return _holder(fd) or "another gpumod command"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def gateway_lock(host: str, *, wait: float = 5.0, what: str = "gateway start"
                 ) -> contextlib.AbstractContextManager[None]:
    """One `gpumod gateway start/stop` at a time per host (apart from its services' locks)."""
    path = _folder() / f"{validate.name(host, 'pod name')}.gateway.lock"

    def busy(holder: str) -> Exception:
        return ConflictError(f"the gateway on {host} is being changed by another gpumod "
                             f"command ({holder or 'unknown holder'})",
                             hint=f"wait for it to finish, then retry {what}")

    return file_lock(path, wait=wait, what=what, busy=busy)


def admission_lock(host: str, *, wait: float = 120.0, progress: Progress | None = None
                   ) -> contextlib.AbstractContextManager[None]:
    """The host's short critical section for admitting and reserving GPU memory."""
    path = _folder() / f"{validate.name(host, 'pod name')}.admission.lock"

    def busy(holder: str) -> Exception:
        return ConflictError(f"GPU memory on {host} is being admitted by another start "
                             f"({holder or 'unknown holder'}) for over {wait:g}s",
                             hint="retry when it has finished")

    return file_lock(path, wait=wait, what="admission", busy=busy, progress=progress,
                     waiting=f"waiting for another start's admission on {host}")


@contextlib.contextmanager
def start_slots(host: str, gpus: Iterable[int], *, wait: float, what: str,
                progress: Progress | None = None) -> Iterator[None]:
    """The start slot of each GPU (in index order: no deadlock between two starts)."""
    with contextlib.ExitStack() as stack:
        for index in sorted(set(gpus)):
            path = _folder() / f"{validate.name(host, 'pod name')}.gpu{int(index)}.start.lock"

            def busy(holder: str, index: int = index) -> Exception:
                return ConflictError(f"another start on GPU {index} of {host} did not finish "
                                     f"within {wait:g}s ({holder or 'unknown holder'})",
                                     hint="retry when it has finished")

            stack.enter_context(file_lock(
                path, wait=wait, what=what, busy=busy, progress=progress,
                waiting=f"waiting for another start on GPU {index} to finish (engines that "
                        "profile memory start one at a time per GPU)"))
        yield
