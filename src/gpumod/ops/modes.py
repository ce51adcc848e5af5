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
    CapacityError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    UsageError,
)
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import lifecycle
from gpumod.ops.lifecycle import Progress, _quiet
from gpumod.store.db import Store

SWITCH_LOCK_WAIT = 3.0


@dataclass(frozen=True)
class Mode:
    name: str
    host: str
    description: str
    services: tuple[str, ...]
    sleep_on_idle: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "description": self.description,
                "services": list(self.services), "sleep_on_idle": list(self.sleep_on_idle)}


def get_mode(store: Store, name: str) -> Mode:
    row = store.query_one("SELECT * FROM modes WHERE name = ?", (name,))
    if row is None:
        known = [r["name"] for r in store.query("SELECT name FROM modes ORDER BY name")]
        raise NotFoundError(f"unknown mode {name!r}",
                            hint=f"known: {', '.join(known)}" if known else
                            "create one with `gpumod mode create NAME --services a,b`")
    items = store.query("SELECT service, sleep_on_idle FROM mode_services WHERE mode = ? "
                        "ORDER BY position", (name,))
    return Mode(row["name"], row["host"], row["description"],
                tuple(r["service"] for r in items),
                tuple(r["service"] for r in items if r["sleep_on_idle"]))


def list_modes(store: Store, host: str | None = None) -> list[Mode]:
    if host:
        rows = store.query("SELECT name FROM modes WHERE host = ? ORDER BY name", (host,))
    else:
        rows = store.query("SELECT name FROM modes ORDER BY host, name")
    return [get_mode(store, r["name"]) for r in rows]


def current_mode(store: Store, host: str) -> str | None:
    row = store.query_one("SELECT current_mode FROM host_state WHERE host = ?", (host,))
    return row["current_mode"] if row else None


def _record_current(store: Store, host: str, mode: str | None) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO host_state (host, current_mode) VALUES (?, ?) "
                   "ON CONFLICT(host) DO UPDATE SET current_mode = excluded.current_mode, "
                   "updated_at = datetime('now')", (host, mode))


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
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM modes WHERE name = ?", (name,)).fetchone():
            raise ConflictError(f"mode {name!r} already exists",
                                hint="delete it first, or pick another name")
        db.execute("INSERT INTO modes (name, host, description) VALUES (?, ?, ?)",
                   (name, host, description))
        db.executemany("INSERT INTO mode_services (mode, service, position, sleep_on_idle) "
                       "VALUES (?, ?, ?, ?)",
                       [(name, s, i, int(s in sleepy)) for i, s in enumerate(services)])
    return get_mode(store, name)


def delete_mode(store: Store, name: str) -> Mode:
    mode = get_mode(store, name)
    with store.transaction() as db:
        db.execute("DELETE FROM modes WHERE name = ?", (name,))
        db.execute("UPDATE host_state SET current_mode = NULL WHERE host = ? AND "
                   "current_mode = ?", (mode.host, name))
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


def plan_switch(store: Store, name: str, *, keep_warm: bool = False) -> SwitchPlan:
    mode = get_mode(store, name)
    specs = lifecycle.list_services(store, mode.host)
    by_name = {s.name: s for s in specs}
    target_specs = [by_name[s] for s in mode.services if s in by_name]
    missing = [s for s in mode.services if s not in by_name]
    if missing:
        raise NotFoundError(f"mode {name} lists unknown services: {', '.join(missing)}")
    ordered = lifecycle.dependency_order(specs, target_specs)
    target = {s.name for s in ordered}
    listed = {r["service"] for r in store.query(
        "SELECT ms.service FROM mode_services ms JOIN modes m ON m.name = ms.mode "
        "WHERE m.host = ?", (mode.host,))}
    # a mode's services and the dependencies started with them
    in_modes = {s.name for s in lifecycle.dependency_order(
        specs, [by_name[n] for n in listed if n in by_name])}
    plan = SwitchPlan(mode.host, name, current_mode(store, mode.host))
    plan.implicit = [s.name for s in ordered if s.name not in mode.services]
    active = [s for s in specs if s.state in lifecycle.ACTIVE_STATES]
    leaving = [s for s in active if s.name not in target and s.name in in_modes]
    plan.untouched = [s.name for s in active if s.name not in target and s.name not in in_modes]
    # reverse dependency order among the leaving ones
    for spec in reversed(lifecycle.dependency_order(specs, leaving)):
        if spec.name not in {s.name for s in leaving}:
            continue
        if keep_warm and spec.sleep_mode != "none" and spec.state == "running":
            plan.sleep.append(spec.name)
        elif spec.state == "sleeping" and keep_warm:
            plan.keep.append(spec.name)
        else:
            plan.stop.append(spec.name)
    for spec in ordered:
        if spec.state == "running":
            plan.keep.append(spec.name)
        elif spec.state == "sleeping":
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
        plan = plan_switch(store, name, keep_warm=keep_warm)
        if check_capacity:
            try:
                plan.fit = check_fit(store, plan, transport)
            except CapacityError as exc:
                plan.fit = f"does not fit: {exc.message}"
        return SwitchResult(plan, ok=True)
    with lifecycle.host_lock(mode.host, wait=lock_wait, what=f"mode switch {name}"):
        plan = plan_switch(store, name, keep_warm=keep_warm)
        if check_capacity:
            plan.fit = check_fit(store, plan, transport)
        store.log_event("mode-switch", host=mode.host,
                        detail=f"{plan.previous or '-'} -> {name}: {', '.join(plan.steps())}")
        result = SwitchResult(plan, ok=False)
        stopped: list[str] = []
        slept: list[str] = []
        started: list[str] = []
        woken: list[str] = []

        def rt(service: str) -> lifecycle.Runtime:
            return lifecycle.runtime(store, lifecycle.get_service(store, service),
                                     transport=transport)

        from gpumod.ops.sleep import sleep_runtime, wake_runtime

        try:
            for service in plan.sleep:
                report = sleep_runtime(store, rt(service), progress=progress)
                if not report.ok:
                    raise EngineError(f"could not put {service} to sleep: {report.summary()}")
                (slept if report.result.startswith(("asleep", "already")) else stopped
                 ).append(service)
                result.done.append(f"sleep {service}: {report.result}")
            for service in plan.stop:
                lifecycle.stop_one(store, rt(service), progress=progress)
                stopped.append(service)
                result.done.append(f"stop {service}")
            for service in [*plan.wake, *plan.start]:
                runtime = rt(service)
                if service in plan.wake:
                    report = wake_runtime(store, runtime, progress=progress, timeout=timeout)
                    if not report.ok:
                        raise EngineError(f"{service} did not wake: {report.summary()}")
                    woken.append(service)
                    result.done.append(f"wake {service}: {report.result}")
                else:
                    started.append(service)  # counted before: a failed start is cleaned too
                    lifecycle.start_one(store, runtime, timeout=timeout, progress=progress)
                    result.done.append(f"start {service}")
            _record_current(store, mode.host, name)
            store.log_event("mode-switched", host=mode.host, detail=f"now {name}")
            result.ok = True
            return result
        except BaseException as exc:
            message = exc.message if isinstance(exc, GpumodError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}")
            result.error = message
            progress(f"switch to {name} failed: {message}; rolling back")
            _rollback(store, plan, stopped, slept, started, woken, result, rt, progress,
                      timeout)
            store.log_event("mode-switch-failed", host=mode.host,
                            detail=f"{name}: {message}; rolled back to "
                                   f"{plan.previous or 'the previous services'}"
                                   + (f"; problems: {'; '.join(result.rollback_problems)}"
                                      if result.rollback_problems else ""))
            if not isinstance(exc, Exception):
                raise
            back = plan.previous or "the previous services"
            problems = (f"; rollback problems: {'; '.join(result.rollback_problems)}"
                        if result.rollback_problems else "")
            raise EngineError(f"switch to {name} failed: {message}; rolled back to {back}"
                              f"{problems}",
                              hint="`gpumod service logs NAME` shows the failing service's log"
                              ) from exc


def _rollback(store: Store, plan: SwitchPlan, stopped: list[str], slept: list[str],
              started: list[str], woken: list[str], result: SwitchResult, rt: Any,
              progress: Progress, timeout: float) -> None:
    from gpumod.ops.sleep import sleep_runtime, wake_runtime

    result.rolled_back = True
    for service in reversed(started):
        try:
            runtime = rt(service)
            lifecycle.stop_one(store, runtime, progress=progress)
        except GpumodError as exc:
            result.rollback_problems.append(f"stop {service}: {exc.message}")
    for service in reversed(woken):
        try:
            report = sleep_runtime(store, rt(service), progress=progress)
            if not report.ok:
                result.rollback_problems.append(f"sleep {service}: {report.summary()}")
        except GpumodError as exc:
            result.rollback_problems.append(f"sleep {service}: {exc.message}")
    specs = lifecycle.list_services(store, plan.host)
    back = [s for s in specs if s.name in set(stopped) | set(slept)]
    for spec in lifecycle.dependency_order(specs, back):
        if spec.name not in set(stopped) | set(slept):
            continue
        try:
            runtime = rt(spec.name)
            if spec.name in slept:
                report = wake_runtime(store, runtime, progress=progress, timeout=timeout)
                if not report.ok:
                    result.rollback_problems.append(f"wake {spec.name}: {report.summary()}")
            else:
                lifecycle.start_one(store, runtime, timeout=timeout, progress=progress)
        except GpumodError as exc:
            result.rollback_problems.append(f"start {spec.name}: {exc.message}")


def _live(store: Store, mode: Mode, transport: Any = None) -> dict[str, Any]:
    """{service: ServiceStatus or GpumodError} for a mode's services (one round trip)."""
    from gpumod.ops.states import host_status

    found: dict[str, Any] = {}
    specs = []
    for service in mode.services:
        try:
            specs.append(lifecycle.get_service(store, service))
        except GpumodError as exc:
            found[service] = exc
    if specs:
        host = hosts_ops.get_host(store, mode.host)
        for status in host_status(store, host, specs, transport=transport):
            found[status.spec.name] = status
    return found


def mode_status(store: Store, host: str, *, transport: Any = None) -> dict[str, Any]:
    name = current_mode(store, host)
    out: dict[str, Any] = {"host": host, "current_mode": name, "services": []}
    if not name:
        return out
    live = _live(store, get_mode(store, name), transport)
    for service in get_mode(store, name).services:
        status = live[service]
        if isinstance(status, GpumodError):
            out["services"].append({"name": service, "state": "unknown",
                                    "error": status.message})
            continue
        out["services"].append({"name": service, "state": status.state,
                                "recorded_state": status.spec.state,
                                "process": status.process, "health": status.health,
                                "sleeping": status.sleeping})
    return out


def verify_mode(store: Store, name: str, *, transport: Any = None) -> dict[str, Any]:
    """Is every service of the mode running and healthy? Lists those that are not.

    A service the mode lets sleep when idle (sleep_on_idle) may be asleep.
    """
    mode = get_mode(store, name)
    live = _live(store, mode, transport)
    services, problems = [], []
    for service in mode.services:
        status = live[service]
        if isinstance(status, GpumodError):
            row = {"name": service, "state": "unknown", "process": "unknown",
                   "health": f"unknown ({status.message})", "sleeping": None, "detail": ""}
        else:
            row = {"name": service, "state": status.state, "process": status.process,
                   "health": status.health, "sleeping": status.sleeping,
                   "detail": status.detail}
        row["ok"] = row["state"] == "running" or (
            row["state"] == "sleeping" and service in mode.sleep_on_idle)
        services.append(row)
        if not row["ok"]:
            problems.append(f"{service}: process {row['process']}, health {row['health']}"
                            + (f" ({row['state']}: {row['detail']})" if row["detail"] else ""))
    return {"mode": name, "host": mode.host, "current": current_mode(store, mode.host) == name,
            "healthy": not problems, "services": services, "problems": problems}
