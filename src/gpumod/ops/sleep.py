"""Sleep and wake a service, verified, with fallbacks that are reported.

Sleep: ask the engine (level 2, level 1, or router unload), then check that the
engine says it sleeps *and* that its process tree's GPU memory really dropped
(nvidia-smi on the host). If a level fails, try the next: level 2 -> level 1 ->
stop (the memory is then surely free; the next wake starts the service again).
Engines without sleep are stopped.

Wake: ask the engine (level 2 wake reloads the weights), then check ``/is_sleeping``
is false, ``/health`` answers 200 and a one-token canary request answers. If that
fails: restart (stop, start, health, canary). Engines without sleep are started.

Every step is logged in the events table and returned in a SleepReport. The record
moves through the lifecycle's states (gpumod.ops.machine): 'sleeping' is written before
the sleep request it announces, 'running' once a wake is verified; a fallback stop is
the lifecycle's own stop. The lifecycle (gpumod.ops.lifecycle: ``sleep``, ``wake``,
``sleep_held``, ``wake_held``) is the API: it takes the service's lock and hands in its own
stop and start (:class:`Moves`) for the fallbacks, so this module never imports it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpumod.engines.checks import memory_dropped
from gpumod.errors import EngineError, GpumodError, UsageError
from gpumod.hosts.processes import tree_gpu_mib
from gpumod.ops import machine
from gpumod.ops.launch import _quiet
from gpumod.ops.runtime import Runtime
from gpumod.ops.services import get_service
from gpumod.store.db import Store

Progress = Callable[[str], None]

LEVELS = {"1": "l1", "2": "l2", "l1": "l1", "l2": "l2", "router": "router"}


@dataclass(frozen=True)
class Moves:
    """The lifecycle's own moves for one service, which the fallbacks use."""

    stop: Callable[[], object]       # stop it, recorded (its memory is then surely free)
    start: Callable[[], object]      # start it (or wake it) and wait until it is ready


@dataclass
class Attempt:
    step: str            # "l2", "l1", "stop", "router", "wake l1", "restart", ...
    ok: bool
    detail: str = ""


@dataclass
class SleepReport:
    service: str
    action: str                      # "sleep" | "wake"
    requested: str
    result: str = "failed"           # "asleep l1", "stopped", "awake", "restarted", "failed"
    ok: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    memory_before_mib: int | None = None
    memory_after_mib: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        tried = "; ".join(f"{a.step}: {'ok' if a.ok else 'failed'}"
                          + (f" ({a.detail})" if a.detail else "") for a in self.attempts)
        mem = ""
        if self.memory_before_mib is not None or self.memory_after_mib is not None:
            mem = (f", GPU memory {_mib(self.memory_before_mib)} -> "
                   f"{_mib(self.memory_after_mib)}")
        return f"{self.service}: {self.action} {self.requested} -> {self.result}{mem} [{tried}]"

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "action": self.action, "requested": self.requested,
                "result": self.result, "ok": self.ok,
                "memory_before_mib": self.memory_before_mib,
                "memory_after_mib": self.memory_after_mib, "seconds": round(self.seconds, 3),
                "attempts": [a.__dict__ for a in self.attempts]}


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value} MiB"


def _memory(rt: Runtime) -> int | None:
    try:
        return tree_gpu_mib(rt.transport, rt.pid())
    except GpumodError:
        return None


def _fallbacks(rt: Runtime, requested: str) -> list[str]:
    if rt.sleep is None or requested == "stop":
        return ["stop"]
    if requested == "l2":
        return ["l2", "l1", "stop"]
    if requested == "l1":
        return ["l1", "stop"]
    return ["router", "stop"]


def check_ready(rt: Runtime, *, canary_check: bool = True) -> None:
    """Health 200 and (for OpenAI-style engines) a one-token canary answer."""
    from gpumod.engines.checks import canary, wait_healthy

    wait_healthy(rt.endpoint, rt.health_path, timeout=60, alive=rt.alive, what=rt.spec.name)
    if canary_check and rt.spec.engine in {"vllm", "llamacpp"}:
        model = rt.sleep.canary_model(rt.endpoint) if rt.sleep else None
        canary(rt.endpoint, model=model, what=rt.spec.name)


def sleep_runtime(store: Store, rt: Runtime, level: str | None = None, *, moves: Moves,
                  progress: Progress = _quiet) -> SleepReport:
    """Put the service of RT to sleep, verified; the caller holds its lock."""
    spec = rt.spec
    if rt.sleep is None:
        requested = "stop"
    elif level is None:
        requested = spec.sleep_mode
    else:
        found = LEVELS.get(str(level).lower())
        if found is None:
            raise UsageError(f"unknown sleep level {level!r}", hint="use 1 or 2")
        requested = found
    if rt.sleep is not None and requested not in rt.sleep.levels:
        raise UsageError(f"{spec.name} ({spec.engine}, sleep {spec.sleep_mode}) cannot sleep "
                         f"at {requested}", hint=f"use {', '.join(rt.sleep.levels)}")
    report = SleepReport(spec.name, "sleep", requested)
    t0 = time.monotonic()
    if not rt.alive():
        raise EngineError(f"{spec.name} is not running", hint="nothing to put to sleep")
    report.memory_before_mib = _memory(rt)
    steps = _fallbacks(rt, requested)
    for step in steps:
        if step == "stop":
            try:
                moves.stop()
                report.attempts.append(Attempt("stop", True, "stopped to free the memory"))
                report.result, report.ok = "stopped", True
                report.memory_after_mib = 0 if report.memory_before_mib is not None else None
            except GpumodError as exc:
                report.attempts.append(Attempt("stop", False, exc.message))
            break
        assert rt.sleep is not None
        try:
            progress(f"{spec.name}: sleep {step}")
            if step != "router" and rt.sleep.is_sleeping(rt.endpoint):
                report.attempts.append(Attempt(step, True, "already asleep"))
                report.result, report.ok = "already asleep", True
                machine.move(store, spec.name, machine.Phase.SLEEPING)
                break
            machine.move(store, spec.name, machine.Phase.SLEEPING, note=f"going to sleep ({step})")
            rt.sleep.sleep(rt.endpoint, step)
            if not rt.sleep.is_sleeping(rt.endpoint):
                raise EngineError("the engine answered but does not report sleeping")
            after = _memory(rt)
            dropped = memory_dropped(report.memory_before_mib, after)
            report.memory_after_mib = after
            if dropped is False:
                raise EngineError(f"GPU memory did not drop ({report.memory_before_mib} -> "
                                  f"{after} MiB): the engine says it sleeps but holds its memory")
            before = report.memory_before_mib
            detail = ("memory not measured (no nvidia-smi)" if before is None or after is None
                      else f"freed {before - after} MiB")
            report.attempts.append(Attempt(step, True, detail))
            report.result, report.ok = f"asleep {step}", True
            machine.move(store, spec.name, machine.Phase.SLEEPING)
            break
        except GpumodError as exc:
            report.attempts.append(Attempt(step, False, exc.message))
            progress(f"{spec.name}: sleep {step} failed: {exc.message}")
            # leave the engine awake before the next attempt
            with contextlib.suppress(GpumodError):
                if rt.sleep.is_sleeping(rt.endpoint):
                    rt.sleep.wake(rt.endpoint, step if step in ("l1", "l2") else "router")
                if not rt.sleep.is_sleeping(rt.endpoint):
                    machine.move(store, spec.name, machine.Phase.READY)
    report.seconds = time.monotonic() - t0
    store.log_event("sleep" if report.ok else "sleep-failed", host=spec.host, service=spec.name,
                    detail=report.summary())
    return report


def wake_runtime(store: Store, rt: Runtime, *, moves: Moves,
                 progress: Progress = _quiet, measure: bool = True) -> SleepReport:
    """Wake the service of RT, verified, restarting it if that fails; the caller holds its
    lock.

    measure=False skips the GPU memory figures (two nvidia-smi reads) for a caller that
    wants readiness only (ensure_ready: the gateway holds a request while it wakes)."""
    spec = rt.spec
    memory = _memory if measure else (lambda _rt: None)
    level = spec.sleep_mode if spec.sleep_mode != "none" else "start"
    report = SleepReport(spec.name, "wake", level)
    t0 = time.monotonic()
    if not rt.alive():
        # stopped (no sleep support, or a sleep that fell back to stop): start it
        try:
            moves.start()
            check_ready(rt)
            report.attempts.append(Attempt("start", True))
            report.result, report.ok = "started", True
        except GpumodError as exc:
            report.attempts.append(Attempt("start", False, exc.message))
        report.memory_after_mib = memory(rt) if report.ok else None
        report.seconds = time.monotonic() - t0
        store.log_event("wake" if report.ok else "wake-failed", host=spec.host,
                        service=spec.name, detail=report.summary())
        return report
    report.memory_before_mib = memory(rt)
    if rt.sleep is not None:
        try:
            progress(f"{spec.name}: wake ({level})")
            if rt.sleep.is_sleeping(rt.endpoint) or spec.sleep_mode == "router":
                rt.sleep.wake(rt.endpoint, level)
            if rt.sleep.is_sleeping(rt.endpoint):
                raise EngineError("the engine still reports sleeping after wake")
            check_ready(rt)
            report.attempts.append(Attempt(f"wake {level}", True, "healthy, canary answered"))
            report.result, report.ok = "awake", True
        except GpumodError as exc:
            report.attempts.append(Attempt(f"wake {level}", False, exc.message))
            progress(f"{spec.name}: wake failed ({exc.message}); restarting")
    else:
        try:
            check_ready(rt)
            report.attempts.append(Attempt("check", True, "already awake"))
            report.result, report.ok = "awake", True
        except GpumodError as exc:
            report.attempts.append(Attempt("check", False, exc.message))
    if not report.ok:
        try:
            moves.stop()
            moves.start()
            check_ready(rt)
            report.attempts.append(Attempt("restart", True))
            report.result, report.ok = "restarted", True
        except GpumodError as exc:
            report.attempts.append(Attempt("restart", False, exc.message))
            report.result = "failed"
    if report.ok:
        if get_service(store, spec.name).state != machine.Phase.READY.value:
            machine.move(store, spec.name, machine.Phase.READY, pid=rt.pid())
        report.memory_after_mib = memory(rt)
    report.seconds = time.monotonic() - t0
    store.log_event("wake" if report.ok else "wake-failed", host=spec.host, service=spec.name,
                    detail=report.summary())
    return report
