"""Modes: named sets of services on one host, and switching between them as a transaction.

A switch (``switch_mode``):

1. takes the host lock (a second switch waits briefly, then refuses);
2. computes the diff against what runs now: services of any mode that run but are not in
   the target *leave*; target services (and their dependencies) that do not run *enter*;
   sleeping target services are woken;
3. checks the target fits the GPUs with the planner (memory of leaving services counted
   as freed);
4. stops (or, with ``keep_warm``, sleeps) leaving services in reverse dependency order;
5. starts entering services in dependency order, one at a time, each healthy before the
   next (vLLM profiles memory assuming its neighbours are still);
6. records the host's current mode only when everything is healthy;
7. on any failure rolls back: stops what it started, brings back what it stopped or slept,
   keeps the previous mode recorded, and raises an error that says what failed.

``dry_run`` returns the plan and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.errors import (
    Cancelled,
    CapacityError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    UsageError,
)
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import lifecycle, locks
from gpumod.ops.launch import _quiet
from gpumod.ops.lifecycle import Progress
from gpumod.ops.mode_records import current_mode, get_mode, list_modes  # noqa: F401
from gpumod.store import modes as table
from gpumod.store.db import Store
from gpumod.store.modes import Mode

SWITCH_LOCK_WAIT = 3.0
# live states (gpumod.ops.states) of a service that holds, or may hold, the host's GPUs
LIVE_ACTIVE = frozenset({"running", "starting", "sleeping", "stopping", "unhealthy"})


def _record_current(store: Store, host: str, mode: str | None) -> None:
    table.set_current(store, host, mode)


def create_mode(store: Store, name: str, services: list[str], *, host: str,
                description: str = "", sleep_on_idle: list[str] | None = None) -> Mode:
    validate.name(name, "mode name")
    validate.no_control_chars(description, "description")
    if len(set(services)) != len(services):
        raise UsageError("a service is listed twice")
    sleepy = list(sleep_on_idle or [])
    stray = set(sleepy) - set(services)
    if stray:
        raise UsageError(f"--sleep-on-idle names services not in the mode: "
                         f"{', '.join(sorted(stray))}")
    for item in services:
        spec = lifecycle.get_service(store, item)
        if spec.host != host:
            raise UsageError(f"service {item} runs on {spec.host}, not {host}",
                             hint="a mode groups services of one host")
    with store.transaction():
        if table.get(store, name) is not None:
            raise ConflictError(f"mode {name!r} already exists",
                                hint="delete it first, or pick another name")
        table.insert(store, name, host=host, description=description, services=services,
                     sleep_on_idle=sleepy)
    return get_mode(store, name)


def delete_mode(store: Store, name: str) -> Mode:
    mode = get_mode(store, name)
    table.delete(store, mode)
    return mode


# ---------------------------------------------------------------------------- planning


@dataclass
class SwitchPlan:
    host: str
    target: str
    previous: str | None
    stop: list[str] = field(default_factory=list)        # reverse dependency order
    sleep: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)       # dependency order
    wake: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)   # running, in no mode
    implicit: list[str] = field(default_factory=list)    # dependencies added to the target
    fit: str = ""

    def steps(self) -> list[str]:
        out = [f"sleep {n}" for n in self.sleep] + [f"stop {n}" for n in self.stop]
        out += [f"wake {n}" for n in self.wake] + [f"start {n}" for n in self.start]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "target": self.target, "previous": self.previous,
                "stop": self.stop, "sleep": self.sleep, "start": self.start, "wake": self.wake,
                "keep": self.keep, "untouched": self.untouched, "implicit": self.implicit,
                "fit": self.fit, "steps": self.steps()}


def plan_switch(store: Store, name: str, *, keep_warm: bool = False,
                transport: Any = None) -> SwitchPlan:
    """The steps from what runs NOW (one status probe of the host) to the mode.

    A member that crashed, or whose cleanup was left unconfirmed, is started again; one
    that is stopping or alive but unhealthy is handled by the lifecycle's ensure_ready.
    """
    from gpumod.errors import TransportError
    from gpumod.ops.states import host_status

    mode = get_mode(store, name)
    specs = lifecycle.list_services(store, mode.host)
    by_name = {s.name: s for s in specs}
    target_specs = [by_name[s] for s in mode.services if s in by_name]
    missing = [s for s in mode.services if s not in by_name]
    if missing:
        raise NotFoundError(f"mode {name} lists unknown services: {', '.join(missing)}")
    ordered = lifecycle.dependency_order(specs, target_specs)
    target = {s.name for s in ordered}
    listed = table.services_in_modes(store, mode.host)
    # a mode's services and the dependencies started with them
    in_modes = {s.name for s in lifecycle.dependency_order(
        specs, [by_name[n] for n in listed if n in by_name])}
    host = hosts_ops.get_host(store, mode.host)
    live = {st.spec.name: st for st in host_status(store, host, specs, transport=transport)}
    blind = sorted(n for n, st in live.items() if st.state in ("unreachable", "unknown")
                   and (n in target or n in in_modes))
    if blind:
        detail = live[blind[0]].detail
        raise TransportError(f"cannot tell what runs on {mode.host} ({detail}), so no switch "
                             f"is planned", hint="check the pod is up, then retry")
    plan = SwitchPlan(mode.host, name, current_mode(store, mode.host))
    plan.implicit = [s.name for s in ordered if s.name not in mode.services]
    active = [s for s in specs if live[s.name].state in LIVE_ACTIVE
              or s.state in lifecycle.machine.ACTIVE]
    leaving = [s for s in active if s.name not in target and s.name in in_modes]
    plan.untouched = [s.name for s in active if s.name not in target and s.name not in in_modes]
    # reverse dependency order among the leaving ones
    for spec in reversed(lifecycle.dependency_order(specs, leaving)):
        if spec.name not in {s.name for s in leaving}:
            continue
        state = live[spec.name].state
        if keep_warm and spec.sleep_mode != "none" and state == "running":
            plan.sleep.append(spec.name)
        elif state == "sleeping" and keep_warm:
            plan.keep.append(spec.name)
        else:
            plan.stop.append(spec.name)
    for spec in ordered:
        state = live[spec.name].state
        if state == "running":
            plan.keep.append(spec.name)
        elif state == "sleeping":
            plan.wake.append(spec.name)
        else:
            plan.start.append(spec.name)
    return plan


def check_fit(store: Store, plan: SwitchPlan, transport: Any) -> str:
    """Do the target mode's services fit once the leaving ones are gone? (the planner's answer)

    The same simulation as `gpumod simulate --mode`: the target set (kept, woken and
    started services, in start order) is placed on the GPUs as nvidia-smi sees them
    now; what the services that stop hold counts as free, what anything else holds as
    used. A service without model facts or a declared budget counts as 0, with a note.
    """
    from gpumod.ops.simulate import simulate

    if not (plan.start + plan.wake):
        return "nothing to start"
    target = [*plan.keep, *plan.wake, *plan.start]
    result = simulate(store, host=plan.host, services=target, live=True, transport=transport,
                      leaving=plan.stop, strict=False)
    placement = result.placement
    where = "" if result.usage == "live" else f" (stored inventory: {result.usage_note})"
    if not placement.fits:
        worst = min(placement.gpus, key=lambda f: f.free_after_mib)
        alts = "; ".join(f"[{a.rank}] {a.description}" for a in placement.alternatives[:3])
        raise CapacityError(
            f"mode {plan.target} does not fit on {plan.host}{where}: GPU {worst.index} would "
            f"need {worst.planned_mib} MiB with {worst.capacity_mib - worst.used_mib} MiB free"
            + (f" ({placement.reason})" if placement.reason else ""),
            hint=(f"alternatives: {alts}; " if alts else "")
            + "`gpumod simulate --mode " + plan.target + "` shows them all")
    note = "fits" + where + " (" + ", ".join(
        f"GPU {f.index}: {f.free_after_mib} MiB left" for f in placement.gpus) + ")"
    if result.warnings:
        note += "; " + "; ".join(result.warnings)
    return note


# ---------------------------------------------------------------------------- switching


@dataclass
class SwitchResult:
    plan: SwitchPlan
    ok: bool
    done: list[str] = field(default_factory=list)
    error: str = ""
    rolled_back: bool = False
    rollback_problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "plan": self.plan.to_json(), "done": self.done,
                "error": self.error, "rolled_back": self.rolled_back,
                "rollback_problems": self.rollback_problems}


def switch_mode(store: Store, name: str, *, dry_run: bool = False, keep_warm: bool = False,
                check_capacity: bool = True, progress: Progress = _quiet,
                lock_wait: float = SWITCH_LOCK_WAIT, transport: Any = None,
                timeout: float = lifecycle.DEFAULT_HEALTH_TIMEOUT) -> SwitchResult:
    mode = get_mode(store, name)
    host = hosts_ops.get_host(store, mode.host)
    transport = transport or hosts_ops.transport_for(host)
    if dry_run:
        plan = plan_switch(store, name, keep_warm=keep_warm, transport=transport)
        if check_capacity:
            try:
                plan.fit = check_fit(store, plan, transport)
            except CapacityError as exc:
                plan.fit = f"does not fit: {exc.message}"
        return SwitchResult(plan, ok=True)
    with locks.host_lock(mode.host, wait=lock_wait, what=f"mode switch {name}"):
        plan = plan_switch(store, name, keep_warm=keep_warm, transport=transport)
        if check_capacity:
            plan.fit = check_fit(store, plan, transport)
        store.log_event("mode-switch", host=mode.host,
                        detail=f"{plan.previous or '-'} -> {name}: {', '.join(plan.steps())}")
        steps = _Steps(store, name, transport, progress, timeout)
        result = SwitchResult(plan, ok=False)
        try:
            for service in plan.sleep:
                report = steps.sleep(service)
                if not report.ok:
                    raise EngineError(f"could not put {service} to sleep: {report.summary()}")
                (steps.slept if report.result.startswith(("asleep", "already"))
                 else steps.stopped).append(service)
                result.done.append(f"sleep {service}: {report.result}")
            for service in plan.stop:
                if steps.stop(service).outcome != "not-running":
                    steps.stopped.append(service)
                result.done.append(f"stop {service}")
            for service in [*plan.wake, *plan.start]:
                if service in plan.wake:
                    report = steps.wake(service)
                    if not report.ok:
                        raise EngineError(f"{service} did not wake: {report.summary()}")
                    steps.woken.append(service)
                    result.done.append(f"wake {service}: {report.result}")
                else:
                    steps.started.append(service)  # counted before: a failed start is cleaned
                    steps.start(service)
                    result.done.append(f"start {service}")
            _record_current(store, mode.host, name)
            store.log_event("mode-switched", host=mode.host, detail=f"now {name}")
            result.ok = True
            return result
        except BaseException as exc:
            cancelled = isinstance(exc, KeyboardInterrupt | Cancelled)
            message = exc.message if isinstance(exc, GpumodError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}")
            result.error = message
            progress(f"switch to {name} {'cancelled' if cancelled else 'failed'}: {message}; "
                     "rolling back")
            _rollback(store, plan, steps, result)
            back = plan.previous or "the previous services"
            problems = (f"; rollback problems: {'; '.join(result.rollback_problems)}"
                        if result.rollback_problems else "")
            store.log_event("mode-switch-failed", host=mode.host,
                            detail=f"{name}: {message}; rolled back to {back}{problems}")
            if cancelled:
                raise Cancelled(f"switch to {name} cancelled; rolled back to {back}{problems}"
                                ) from None
            if not isinstance(exc, Exception):
                raise
            raise EngineError(f"switch to {name} failed: {message}; rolled back to {back}"
                              f"{problems}",
                              hint="`gpumod service logs NAME` shows the failing service's log"
                              ) from exc


class _Steps:
    """One switch's steps, each through the lifecycle under the service's lock (the
    switch holds the host's lock exclusively), and what each step did (for rollback)."""

    def __init__(self, store: Store, mode: str, transport: Any, progress: Progress,
                 timeout: float) -> None:
        self.store, self.what, self.transport = store, f"mode switch {mode}", transport
        self.progress, self.timeout = progress, timeout
        self.stopped: list[str] = []
        self.slept: list[str] = []
        self.started: list[str] = []
        self.woken: list[str] = []

    def _rt(self, service: str) -> lifecycle.Runtime:
        return lifecycle.runtime(self.store, lifecycle.get_service(self.store, service),
                                 transport=self.transport)

    def sleep(self, service: str) -> Any:
        with lifecycle.held(service, self.what):
            return lifecycle.sleep_held(self.store, self._rt(service), progress=self.progress)

    def wake(self, service: str) -> Any:
        with lifecycle.held(service, self.what):
            return lifecycle.wake_held(self.store, self._rt(service), progress=self.progress,
                                timeout=self.timeout)

    def stop(self, service: str) -> lifecycle.StopResult:
        with lifecycle.held(service, self.what):
            return lifecycle.stop_held(self.store, lifecycle.get_service(self.store, service),
                                       forget=False, transport=self.transport,
                                       progress=self.progress)

    def start(self, service: str) -> None:
        with lifecycle.held(service, self.what):
            lifecycle.ensure_ready_held(self.store, lifecycle.get_service(self.store, service),
                                        timeout=self.timeout, progress=self.progress,
                                        transport=self.transport)


def _rollback(store: Store, plan: SwitchPlan, steps: _Steps, result: SwitchResult) -> None:
    result.rolled_back = True
    for service in reversed(steps.started):
        if lifecycle.get_service(store, service).state not in lifecycle.machine.ACTIVE:
            continue  # its failed start was cleaned up and recorded already
        try:
            steps.stop(service)
        except GpumodError as exc:
            result.rollback_problems.append(f"stop {service}: {exc.message}")
    for service in reversed(steps.woken):
        try:
            report = steps.sleep(service)
            if not report.ok:
                result.rollback_problems.append(f"sleep {service}: {report.summary()}")
        except GpumodError as exc:
            result.rollback_problems.append(f"sleep {service}: {exc.message}")
    specs = lifecycle.list_services(store, plan.host)
    again = set(steps.stopped) | set(steps.slept)
    for spec in lifecycle.dependency_order(specs, [s for s in specs if s.name in again]):
        if spec.name not in again:
            continue
        try:
            if spec.name in steps.slept:
                report = steps.wake(spec.name)
                if not report.ok:
                    result.rollback_problems.append(f"wake {spec.name}: {report.summary()}")
            else:
                steps.start(spec.name)
        except GpumodError as exc:
            result.rollback_problems.append(f"start {spec.name}: {exc.message}")
