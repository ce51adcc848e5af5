"""The one launch path: admit, start, wait healthy, record, with every fault ending in recorded truth.

`pi start` (a new deployment, reserved in the store first), `gpumod service start`,
mode switches, wake-by-restart and `gpumod watch` all reach :func:`launch` through the
lifecycle (gpumod.ops.lifecycle), which holds the service's lock and has recorded it
'starting':

1. admission (gpumod.ops.admission): the planner's ``check_start`` on live GPU figures,
   counting other starts' reservations, in one per-host critical section; engines that
   profile memory at start take their GPUs' start slots first;
2. the supervisor prepares the engine (secrets by stdin into a 0600 file, every write
   checked), the pid is recorded, then the engine is released;
3. health is awaited ON the host with a deadline while the engine log streams (the
   answer must come from the service's own process group);
4. the record says 'running' with the pid; the planner learns from the engine's log
   (``gpumod.ops.calibration.after_start``).

Any failure, Ctrl+C, SIGTERM or SIGHUP after the record says 'starting' moves it to
'stopping' and stops what was launched. Confirmed gone: a new deployment's record and
folder are removed (the log of a failed start is kept aside until the next start), a
defined service is recorded 'failed' (or 'stopped' when cancelled or refused before
launch). Not confirmed (the host dropped): the record stays 'stopping', says why, and
`pi stop NAME` finishes the cleanup.

Where the engine listens: gpumod.ops.addresses (one bind rule).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpumod.errors import Cancelled, EngineError, GpumodError, add_hint
from gpumod.ops import admission, inventory, machine
from gpumod.ops import probe as probes
from gpumod.ops.addresses import probe_address
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

if TYPE_CHECKING:
    from gpumod.ops.runtime import Runtime

Output = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- waiting


def wait_healthy(rt: Runtime, pid: int | None, deadline: float, log: Output) -> float:
    """Stream the engine log until its health answers; EngineError with its own errors if not.

    On the host, in one long call: the answer must come from the service's own process
    group (another program on the port is never taken for it) wherever the supervisor
    and engine let it be traced (``Runtime.owner_check``).
    """
    began = time.monotonic()
    with rt.transport.stream(probes.wait_argv(
            rt.plan.service_dir, rt.spec.port, rt.health_path, probe_address(rt.bind), deadline,
            rt.engine.health.ok_codes, pid=pid, owner_check=rt.owner_check)) as out:
        for line in out.iter_lines():
            log(line)
    code = out.returncode
    if code == 0:
        return time.monotonic() - began
    errors = rt.engine.error_lines(rt.read_log(400))
    detail = " | ".join(errors[-3:]) if errors else "no output"
    name = f"{rt.spec.name} ({rt.engine.name})"
    if code == 3:
        raise EngineError(f"{name} exited during start: {detail}")
    if code == 4:
        raise EngineError(f"{name} was not healthy within {deadline:g}s: {detail}",
                          hint="a big model can need longer: --timeout SECONDS")
    raise EngineError(f"waiting for {name} failed (exit {code}): {detail}")


# ---------------------------------------------------------------------------- planner hooks


def calibrate(store: Store, rt: Runtime, pid: int | None, *,
              estimate: dict[str, Any] | None) -> None:
    """Feed the planner what the engine reported (best effort: never fails a start)."""
    from gpumod.ops.calibration import after_start

    try:
        from gpumod.hosts.processes import tree_memory

        held = tree_memory(rt.transport, pid)
        process_mib = held.busiest if held else None
        after_start(store, rt.spec, rt.host, rt.read_log(2000), process_mib, estimate=estimate)
    except Exception as exc:  # calibration is best effort: never fail a healthy start
        store.log_event("calibration-failed", host=rt.host.name, service=rt.spec.name,
                        detail=f"{type(exc).__name__}: {exc}")




# ---------------------------------------------------------------------------- launch


def launch(store: Store, rt: Runtime, *, timeout: float, new: bool = False,
           force: bool = False, log: Output = _quiet, progress: Output = _quiet) -> ServiceSpec:
    """Admit, start, wait until healthy, record; on failure no engine runs unrecorded.

    The record says 'starting' already (and the caller holds the service's lock). new:
    rt.spec is a `pi start` reservation: a healthy start records the launch (pid, args,
    env, argv); a failed one whose engine is confirmed gone removes the record and folder.
    """
    name = rt.spec.name
    launched = released = False
    try:
        # the host's GPUs as read now; a GPU engine without GPUs gets them (ops.inventory),
        # before the GPUs' start turns are taken
        spec, host = inventory.ensure_gpus(store, rt.spec, rt.host, transport=rt.transport,
                                           progress=progress)
        if (spec, host) != (rt.spec, rt.host):
            rt = rt.with_spec(spec, host)
        with admission.start_turn(rt, timeout=timeout, progress=progress):
            rt, estimate = admission.admit_and_reserve(store, rt, force=force,
                                                       progress=progress)
            spec = rt.spec
            progress(f"{name}: starting ({spec.engine}, port {spec.port}, GPU(s) "
                     f"{','.join(map(str, spec.gpus)) or 'none'}, {rt.supervisor.name})")
            launched = True
            pid = rt.supervisor.start(
                rt.plan, rt.secrets,
                before_run=lambda held: machine.record_identity(store, name, held))
            released = True
            if pid is not None:
                machine.record_identity(store, name, pid)
            took = wait_healthy(rt, pid, timeout, log)
        pid = pid or rt.pid()
        if new:
            done = machine.ready(store, spec.with_(
                pid=pid, env=dict(rt.plan.env),
                extra={**spec.extra, "pid": pid, "argv": list(rt.plan.argv)}))
        else:
            done = machine.move(store, name, machine.Phase.READY, pid=pid, reserved_mib=None)
            done = spec.with_(state=done.state, pid=pid)
    except BaseException as exc:
        _failed(store, rt, exc, new=new, launched=launched, released=released)
        raise  # _failed raises; this keeps the type checkers sure
    store.log_event("started", host=spec.host, service=name,
                    detail=f"{spec.engine} {spec.model} port {spec.port}, healthy after "
                           f"{took:.1f}s, pid {pid}")
    progress(f"{name}: healthy after {took:.1f}s")
    calibrate(store, rt, pid, estimate=estimate)
    return done


def _failed(store: Store, rt: Runtime, exc: BaseException, *, new: bool,
            launched: bool, released: bool) -> None:
    """After a failed or cancelled start: stop what was launched, record the truth, raise.

    launched: the supervisor was asked to start it; released: its engine ran.
    """
    name, host = rt.spec.name, rt.host.name
    cancelled = isinstance(exc, KeyboardInterrupt | Cancelled)
    reason = ("cancelled" if isinstance(exc, KeyboardInterrupt) else
              exc.message if isinstance(exc, GpumodError) else f"{type(exc).__name__}: {exc}")
    cleanup: str | None = None
    try:
        machine.move(store, name, machine.Phase.STOPPING, note=f"start failed: {reason}")
        if launched:
            if new:
                rt.supervisor.remove(rt.plan, timeout=10, keep_log=not cancelled)
            else:
                rt.supervisor.stop(rt.plan, timeout=10)
    except GpumodError as stop_exc:
        cleanup = stop_exc.message
    except KeyboardInterrupt:  # a second signal during the cleanup: the record stays
        cleanup = "interrupted"
    try:
        if cleanup is not None:
            machine.move(store, name, machine.Phase.STOPPING, reserved_mib=None,
                         note=f"start failed ({reason}); cleanup not confirmed: {cleanup}")
        elif new:
            machine.forget(store, name)
        else:
            failed = launched and not cancelled
            machine.move(store, name, machine.Phase.FAILED if failed else machine.Phase.STOPPED,
                         pid=None, reserved_mib=None,
                         note=f"its last start failed: {reason}" if failed else "")
    except GpumodError as record_exc:  # the original error goes on; the record says 'stopping'
        add_hint(exc, f"{name}'s record could not be updated ({record_exc.message}); "
                      f"it says stopping: `pi stop {name}` finishes it")
    store.log_event("start-failed", host=rt.spec.host, service=name,
                    detail=reason + (f"; cleanup not confirmed: {cleanup}" if cleanup else ""))
    kept = (f"; the engine may still run on {host}: its record is kept, `pi stop {name}` "
            f"finishes the cleanup ({cleanup})" if cleanup else "")
    if cancelled:
        what = "nothing recorded" if new else f"{name} is stopped"
        raise Cancelled(f"start cancelled; the engine was stopped and {what}" if not cleanup
                        else f"start cancelled{kept}") from None
    if isinstance(exc, GpumodError):
        if released and isinstance(exc, EngineError) and not cleanup:
            where = rt.plan.kept_log_path if new else rt.plan.log_path
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + f"the engine's log: {where}"
        if cleanup:
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + kept.lstrip("; ")
    raise exc

