"""One lifecycle per service: the operations every front end drives.

`pi start/stop`, `gpumod service start/stop/restart/remove/sleep/wake`, mode switches,
`gpumod watch` (and the gateway) all change services through this module, so there is
one way a service starts, one way it stops, and one record of where it is (the states
and moves of gpumod.ops.machine). The API is small on purpose, and each call decides
inside the lifecycle, under the service's lock, what to do from the service's LIVE
state (one status probe: process and health, checked on its host), so callers never
inspect a state first and cannot race:

``ensure_ready(store, name)``
    returns once NAME answers health: ready -> at once; sleeping -> woken (verified);
    stopped, failed or crashed -> started; its own engine alive but not answering yet ->
    waits for its health (never killed); left over by an interrupted start or an
    unconfirmed stop -> stopped (confirmed), then started; being changed by another
    command -> waits for that command (up to ``wait``), then decides again. Not its
    dependencies: ``start_service`` starts those first.
``stop(store, name)``
    stops NAME, and first the running services that depend on it. The record goes
    'stopping' before any signal; once the engine is confirmed gone a deployment's
    record is removed, a definition's says 'stopped'. Unconfirmed: the record stays
    'stopping' with the reason, and the error says so.
``sleep(store, name, level)`` / ``wake(store, name)``
    a verified sleep (falls back L2 -> L1 -> stop) / wake (falls back to a restart),
    reported attempt by attempt (the work is :mod:`gpumod.ops.sleep`).
``restart_service``, ``remove_service``.

Callers that already hold the host's lock (a mode switch holds it exclusively) drive
one service at a time with ``with lifecycle.held(name, what):`` and
:func:`ensure_ready_held` / :func:`stop_held`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from gpumod.errors import EngineError, GpumodError, TransportError, UsageError, add_hint
from gpumod.hosts.transports.base import Transport
from gpumod.ops import locks, machine
from gpumod.ops import probe as probes
from gpumod.ops.definitions import (
    add_service,
    dependency_order,
    dependents,
    set_context,
)
from gpumod.ops.launch import _quiet, launch
from gpumod.ops.machine import StopResult
from gpumod.ops.runtime import Runtime, launch_plan, runtime
from gpumod.ops.services import get_service, is_deployment, is_multinode, list_services
from gpumod.ops.sleep import Moves, SleepReport, sleep_runtime, wake_runtime
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

if TYPE_CHECKING:
    from gpumod.ops.states import ServiceStatus

__all__ = ["Runtime", "StopResult", "add_service", "dependency_order", "ensure_ready", "get_service",
           "launch_plan", "list_services", "remove_service", "restart_service", "runtime",
           "set_context", "sleep", "sleep_held", "start_service", "stop", "stop_service", "wake",
           "wake_held"]

Progress = Callable[[str], None]
DEFAULT_HEALTH_TIMEOUT = 600.0
LOCK_WAIT = 5.0          # how long a command waits for another one on the same service
PORT_FREE_WAIT = 5.0     # after a stop, how long the port may take to close


# ---------------------------------------------------------------------------- locks


@contextlib.contextmanager
def held(name: str, what: str, *, wait: float = LOCK_WAIT,
         progress: Progress | None = None) -> Iterator[None]:
    """The service's lock, for a caller that already holds its host's lock."""
    with locks.service_lock(name, wait=wait, what=what, progress=progress):
        yield


@contextlib.contextmanager
def changing(store: Store, name: str, what: str, *, wait: float = LOCK_WAIT,
             progress: Progress | None = None) -> Iterator[ServiceSpec]:
    """Host lock (shared) then the service's lock; yields its record as it is now."""
    spec = get_service(store, name)
    with locks.host_lock(spec.host, shared=True, wait=wait, what=what, progress=progress), \
            held(name, what, wait=wait, progress=progress):
        yield get_service(store, name)


def live(store: Store, spec: ServiceSpec, transport: Transport | None = None) -> ServiceStatus:
    """The service's live state: the one status probe (gpumod.ops.states)."""
    from gpumod.ops.states import service_status

    return service_status(store, spec.name, transport=transport)


# ---------------------------------------------------------------------------- start


def ensure_ready(store: Store, name: str, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
                 progress: Progress = _quiet, force: bool = False,
                 transport: Transport | None = None, wait: float | None = None,
                 log: Progress = _quiet) -> ServiceSpec:
    """Bring NAME to ready and return once it answers health (see the module docstring)."""
    with changing(store, name, f"start {name}", progress=progress,
                  wait=timeout if wait is None else wait) as spec:
        return ensure_ready_held(store, spec, timeout=timeout, progress=progress,
                                 force=force, transport=transport, log=log)[0]


def ensure_ready_held(store: Store, spec: ServiceSpec, *,
                      timeout: float = DEFAULT_HEALTH_TIMEOUT, progress: Progress = _quiet,
                      force: bool = False, transport: Transport | None = None,
                      log: Progress = _quiet) -> tuple[ServiceSpec, str]:
    """ensure_ready for a caller holding the service's lock: (spec, 'ready' | 'woken' |
    'started')."""
    name = spec.name
    _refuse_multinode(spec)
    status = live(store, spec, transport)
    if status.state == "unreachable":
        raise TransportError(f"{spec.host} cannot be reached, so whether {name} runs is "
                             f"unknown: {status.detail}", hint="check the pod is up "
                             f"(`pi ssh {spec.host} true`), then retry")
    if status.state == "unknown":
        raise EngineError(f"the state of {name} on {spec.host} is unknown: {status.detail}")
    rt = runtime(store, spec, transport=transport)
    if status.state == "running":
        if spec.state != machine.Phase.READY.value:  # started outside gpumod: adopt it
            if spec.state != machine.Phase.STARTING.value:
                machine.move(store, name, machine.Phase.STARTING)
            spec = machine.move(store, name, machine.Phase.READY, pid=rt.pid(),
                                reserved_mib=None)
        progress(f"{name}: already running")
        return spec, "ready"
    if status.state == "sleeping":
        # the memory figures (two nvidia-smi reads) are the report's, which is not returned
        report = wake_held(store, rt, progress=progress, timeout=timeout, measure=False)
        if not report.ok:
            raise EngineError(report.summary())
        return get_service(store, name), "woken"
    if status.process == "running" and spec.state == machine.Phase.READY.value:
        # its own engine, alive but not answering (loading, busy): wait, never kill it
        from gpumod.ops.launch import wait_healthy

        progress(f"{name}: {status.state} ({status.detail}); waiting for its health")
        wait_healthy(rt, rt.pid(), timeout, log)
        return spec, "ready"
    if status.process == "running" or spec.state in machine.ACTIVE:
        progress(f"{name}: {status.state} ({status.detail}); stopping it before the start")
        stop_held(store, spec, forget=False, transport=transport, progress=progress)
        rt = runtime(store, get_service(store, name), transport=transport)
    machine.move(store, name, machine.Phase.STARTING, pid=None)
    done = launch(store, rt, timeout=timeout, force=force, log=log, progress=progress)
    return done, "started"


def _refuse_multinode(spec: ServiceSpec) -> None:
    """A deployment across pods is started by `pi start --pods` only (its Ray nodes)."""
    if is_multinode(spec):
        raise UsageError(f"{spec.name} spans pods "
                         f"({', '.join(spec.extra['multinode']['pods'])}): it is started "
                         "only by `pi start ... --pods`",
                         hint=f"`pi stop {spec.name}`, then start it again with --pods")


def start_service(store: Store, name: str, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
                  progress: Progress = _quiet, lock_wait: float = LOCK_WAIT,
                  transport: Transport | None = None, force: bool = False) -> list[str]:
    """Start a service and (first) its dependencies; returns the names started or woken.

    If one fails, the ones this call started are stopped again.
    """
    spec = get_service(store, name)
    started: list[str] = []
    with locks.host_lock(spec.host, shared=True, wait=lock_wait,
                         what=f"service start {name}", progress=progress):
        for item in dependency_order(list_services(store, spec.host), [spec]):
            try:
                with held(item.name, f"service start {name}", wait=lock_wait,
                          progress=progress):
                    _, what = ensure_ready_held(store, get_service(store, item.name),
                                                timeout=timeout, progress=progress,
                                                force=force, transport=transport)
            except Exception as exc:
                if isinstance(exc, GpumodError):
                    exc.message = f"{item.name} did not start: {exc.message}"
                    exc.hint = exc.hint or f"see `gpumod service logs {item.name}`"
                for done in reversed(started):  # stop what this call started
                    try:
                        with held(done, f"rollback of {name}"):
                            stop_held(store, get_service(store, done), forget=False,
                                      transport=transport, progress=progress)
                    except GpumodError as stop_exc:
                        add_hint(exc, f"{done} was started and could not be stopped again: "
                                      f"{stop_exc.message}")
                raise
            if what != "ready":
                started.append(item.name)
    return started


# ---------------------------------------------------------------------------- stop


def stop_held(store: Store, spec: ServiceSpec, *, forget: bool,
              timeout: float = 20, transport: Transport | None = None,
              progress: Progress = _quiet, failed: str = "") -> StopResult:
    """Stop one service (caller holds its lock); see the module docstring.

    failed: record it 'failed' with this reason instead of 'stopped' (watch gave up).
    """
    if is_multinode(spec):  # vLLM on the head and a Ray node on every pod
        from gpumod.ops import multinode

        return multinode.stop_held(store, spec, forget=forget, timeout=timeout,
                                   progress=progress, failed=failed)
    name = spec.name
    rt = runtime(store, spec, transport=transport, secrets={})
    progress(f"{name}: stopping")
    machine.move(store, name, machine.Phase.STOPPING, note="stopping")
    try:
        if forget:
            outcome = rt.supervisor.remove(rt.plan, timeout=timeout)
        else:
            outcome = rt.supervisor.stop(rt.plan, timeout=timeout)
        if outcome != "not-running":
            _wait_port_free(rt)
    except (GpumodError, KeyboardInterrupt) as exc:
        reason = exc.message if isinstance(exc, GpumodError) else "interrupted"
        with contextlib.suppress(GpumodError):
            machine.move(store, name, machine.Phase.STOPPING,
                         note=f"stop not confirmed: {reason}")
        if isinstance(exc, GpumodError):
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + (
                f"{name}'s record is kept; `pi stop {name}` finishes the stop")
        raise
    if forget:
        machine.forget(store, name)
    else:
        machine.move(store, name, machine.Phase.FAILED if failed else machine.Phase.STOPPED,
                     pid=None, reserved_mib=None, note=failed)
    store.log_event("stop", host=spec.host, service=name, detail=outcome)
    return StopResult(name, spec.host, outcome, forget)


def _wait_port_free(rt: Runtime) -> None:
    end = time.monotonic() + PORT_FREE_WAIT
    while rt.spec.port in probes.listening_ports(rt.transport):
        if time.monotonic() > end:
            raise EngineError(f"{rt.spec.name} stopped but port {rt.spec.port} on "
                              f"{rt.host.name} is still in use",
                              hint="a process it started may have left its group")
        time.sleep(0.2)


def stop(store: Store, name: str, *, timeout: float = 20, progress: Progress = _quiet,
         transport: Transport | None = None, wait: float = LOCK_WAIT,
         forget: bool | None = None) -> list[StopResult]:
    """Stop NAME, its running dependents first. forget: remove the record once the engine
    is confirmed gone (default: for `pi start` deployments, not for definitions)."""
    spec = get_service(store, name)
    results: list[StopResult] = []
    with locks.host_lock(spec.host, shared=True, wait=wait, what=f"stop {name}",
                         progress=progress):
        for item in [*dependents(list_services(store, spec.host), name), spec]:
            with held(item.name, f"stop {name}", wait=wait, progress=progress):
                current = get_service(store, item.name)
                if item.name != name and current.state not in machine.ACTIVE:
                    continue
                gone = is_deployment(current) if forget is None else forget
                results.append(stop_held(store, current, forget=gone, timeout=timeout,
                                         transport=transport, progress=progress))
    return results


def stop_service(store: Store, name: str, *, progress: Progress = _quiet,
                 lock_wait: float = LOCK_WAIT, transport: Transport | None = None
                 ) -> list[str]:
    """`gpumod service stop`: the names stopped (dependents first)."""
    return [r.name for r in stop(store, name, progress=progress, wait=lock_wait,
                                 transport=transport)]


def restart_service(store: Store, name: str, *, progress: Progress = _quiet,
                    timeout: float = DEFAULT_HEALTH_TIMEOUT,
                    transport: Transport | None = None) -> list[str]:
    _refuse_multinode(get_service(store, name))  # before it is stopped
    stopped = [r.name for r in stop(store, name, progress=progress, transport=transport,
                                    forget=False)]
    started: list[str] = []
    for item in reversed(stopped):  # the service first, then its dependents again
        started += start_service(store, item, progress=progress, timeout=timeout,
                                 transport=transport)
    return started


def remove_service(store: Store, name: str, *, transport: Transport | None = None) -> None:
    """Stop a service and delete its definition, folder and unit."""
    from gpumod.errors import ConflictError

    with changing(store, name, f"service remove {name}") as spec:
        users = [s.name for s in list_services(store, spec.host) if name in s.depends_on]
        if users:
            raise ConflictError(f"{', '.join(users)} depend(s) on {name}",
                                hint="remove or change those services first")
        stop_held(store, spec, forget=True, transport=transport)
        store.log_event("removed", host=spec.host, service=name)


# ---------------------------------------------------------------------------- sleep


def _moves(store: Store, name: str, rt: Runtime, progress: Progress,
           timeout: float) -> Moves:
    """This lifecycle's stop and start of NAME, for the sleep and wake fallbacks."""
    return Moves(
        stop=lambda: stop_held(store, get_service(store, name), forget=False,
                               transport=rt.transport, progress=progress),
        start=lambda: ensure_ready_held(store, get_service(store, name), timeout=timeout,
                                        progress=progress, transport=rt.transport))


def sleep_held(store: Store, rt: Runtime, level: str | None = None, *,
               progress: Progress = _quiet) -> SleepReport:
    """sleep for a caller holding the service's lock (a mode switch, `gpumod watch`)."""
    moves = _moves(store, rt.spec.name, rt, progress, DEFAULT_HEALTH_TIMEOUT)
    return sleep_runtime(store, rt, level, moves=moves, progress=progress)


def wake_held(store: Store, rt: Runtime, *, progress: Progress = _quiet,
              timeout: float = DEFAULT_HEALTH_TIMEOUT, measure: bool = True) -> SleepReport:
    """wake for a caller holding the service's lock (measure: see ops.sleep.wake_runtime)."""
    moves = _moves(store, rt.spec.name, rt, progress, timeout)
    return wake_runtime(store, rt, moves=moves, progress=progress, measure=measure)


def sleep(store: Store, name: str, level: str | None = None, *, progress: Progress = _quiet,
          transport: Transport | None = None, wait: float = LOCK_WAIT) -> SleepReport:
    """Put NAME to sleep, verified, with fallbacks (l2 -> l1 -> stop; see gpumod.ops.sleep)."""
    with changing(store, name, f"service sleep {name}", wait=wait, progress=progress) as spec:
        return sleep_held(store, runtime(store, spec, transport=transport), level,
                          progress=progress)


def wake(store: Store, name: str, *, progress: Progress = _quiet,
         transport: Transport | None = None, wait: float = LOCK_WAIT,
         timeout: float = DEFAULT_HEALTH_TIMEOUT) -> SleepReport:
    """Wake NAME, verified (health and a canary), restarting it if that fails."""
    with changing(store, name, f"service wake {name}", wait=wait, progress=progress) as spec:
        return wake_held(store, runtime(store, spec, transport=transport), progress=progress,
                         timeout=timeout)
