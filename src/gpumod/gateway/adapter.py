"""The ONE place the gateway calls the service lifecycle (gpumod.ops.lifecycle).

The gateway keeps its own *scheduling* (who waits for whom, which idle model makes
room, per-model queues, draining); every change to a service is the lifecycle's, so
there is one state machine and one record of where each service is:

- :meth:`Lifecycle.activate` is ``lifecycle.ensure_ready`` (dependencies first): it
  decides from the live state under the host and service locks whether to return,
  wake (verified), start, wait for another command, or finish a left-over stop first;
- :meth:`Lifecycle.rest` is the idle action of gpumod.ops.idle, shared with `gpumod
  watch` (the lifecycle's verified sleep, else a stop that keeps the record);
- :meth:`Lifecycle.stop` is ``lifecycle.stop`` (record kept: the next request starts
  the service again);
- reading: the route table from the records (gpumod.ops.gateway_routes), the live
  states (one probe of the host), the GPUs' free memory (ops.inventory.free_mib).

The methods block (on a pod the gateway runs there, so the transport is local) and run
in the gateway's worker threads; each thread has its own store connection
(`ops.session.open_store` caches one per thread). Like every front end, the gateway
reaches gpumod through gpumod.ops only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpumod.errors import CapacityError, ConflictError, GpumodError, NotFoundError

if TYPE_CHECKING:
    from gpumod.ops.gateway_routes import Route
    from gpumod.store.db import Store

# ops.states' words -> the gateway's
SLOT_STATES = {"running": "ready", "sleeping": "sleeping", "starting": "starting",
               "stopping": "stopping", "unhealthy": "unhealthy", "crashed": "stopped",
               "stopped": "stopped", "unreachable": "unknown", "unknown": "unknown"}
HEALTH_TIMEOUT = 10.0  # per health answer in a probe: a loaded engine is not a failed one
# An engine that failed because the GPU memory was taken: evicting someone may help.
_MEMORY = re.compile(r"Free memory on device|out of memory|No available memory for the cache|"
                     r"cudaMalloc|failed to allocate|CUDA error: out of memory", re.I)
_TIMEOUT = re.compile(r"not healthy within|did not finish within|no answer within", re.I)


class ActivationFailed(Exception):
    """A wake or start that did not end ready. kind: capacity | timeout | engine | busy |
    gone (the service was removed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Rested:
    """A service put to rest: its new state and its memory per GPU before and after."""

    state: str                     # sleeping | stopped
    detail: str
    awake_mib: int | None = None
    asleep_mib: int | None = None


def classify(exc: GpumodError) -> ActivationFailed:
    if isinstance(exc, CapacityError) or _MEMORY.search(exc.message):
        return ActivationFailed("capacity", exc.message)
    if isinstance(exc, ConflictError):
        return ActivationFailed("busy", exc.message)
    if _TIMEOUT.search(exc.message):
        return ActivationFailed("timeout", exc.message)
    return ActivationFailed("engine", exc.message)


def _per_gpu(mib: int | None, gpus: tuple[int, ...]) -> int | None:
    return None if mib is None else int(mib / max(1, len(gpus)))


class Lifecycle:
    def __init__(self, host: str, *, start_timeout: float = 600.0) -> None:
        self.host = host
        self.start_timeout = start_timeout

    def _store(self) -> Store:
        from gpumod.ops.session import open_store

        return open_store()

    # -- reading ----------------------------------------------------------------
    def routes(self, default_ttl: float | None) -> list[Route]:
        from gpumod.ops.gateway_routes import routes

        return routes(self._store(), self.host, default_ttl)

    def states(self) -> dict[str, str]:
        """Every service's live state (one probe of the host), in the gateway's words."""
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops.services import list_services
        from gpumod.ops.states import host_status

        store = self._store()
        host = hosts_ops.get_host(store, self.host)
        statuses = host_status(store, host, list_services(store, self.host),
                               health_timeout=HEALTH_TIMEOUT)
        return {st.spec.name: SLOT_STATES.get(st.state, "unknown") for st in statuses}

    def free_mib(self) -> dict[int, tuple[int, int]] | None:
        """{GPU index: (free MiB, total MiB)} from nvidia-smi now; None without one."""
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops import inventory

        return inventory.free_mib(hosts_ops.get_host(self._store(), self.host))

    # -- acting -------------------------------------------------------------------
    def activate(self, name: str) -> str:
        """Bring a service (its dependencies first) to ready: 'woke', 'started' or 'ready'
        (it already was). Raises ActivationFailed."""
        from gpumod.ops import lifecycle

        store = self._store()
        before = ""
        try:
            spec = lifecycle.get_service(store, name)
        except NotFoundError as exc:  # removed since the gateway read its routes
            raise ActivationFailed("gone", exc.message) from exc
        try:
            for item in lifecycle.dependency_order(lifecycle.list_services(store, spec.host),
                                                   [spec]):
                before = lifecycle.get_service(store, item.name).state
                lifecycle.ensure_ready(store, item.name, timeout=self.start_timeout,
                                       wait=self.start_timeout)
        except GpumodError as exc:
            raise classify(exc) from exc
        return {"sleeping": "woke", "running": "ready"}.get(before, "started")

    def rest(self, name: str) -> Rested:
        """The idle action, as `gpumod watch` does it (gpumod.ops.idle.rest)."""
        from gpumod.errors import EngineError
        from gpumod.ops import idle, lifecycle

        store = self._store()
        spec = lifecycle.get_service(store, name)
        try:
            report = idle.rest(store, name, wait=self.start_timeout)
        except EngineError:
            if lifecycle.live(store, spec).process == "running":
                raise
            # its engine is gone (crashed): the lifecycle's stop confirms and records it
            lifecycle.stop(store, name, forget=False, wait=self.start_timeout)
            return Rested("stopped", "was not running")
        if not report.ok:
            raise GpumodError(report.summary())
        state = "stopped" if report.result == "stopped" else "sleeping"
        return Rested(state, report.summary(), _per_gpu(report.memory_before_mib, spec.gpus),
                      _per_gpu(report.memory_after_mib, spec.gpus))

    def stop(self, name: str) -> Rested:
        """Stop a service to free its memory; the record is kept (stopped)."""
        from gpumod.ops import lifecycle

        lifecycle.stop(self._store(), name, forget=False, wait=self.start_timeout)
        return Rested("stopped", "stopped to free its memory")


def read_key(path: str | None, var: str | None) -> str | None:
    """The backend's own key from its 0600 env file (KEY='value' lines); None if absent."""
    if not path or not var:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                name, sep, value = line.strip().partition("=")
                if sep and name == var:
                    words = shlex.split(value)
                    return words[0] if words else None
    except (OSError, ValueError):
        return None
    return None
