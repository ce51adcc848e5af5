"""Admission under concurrency: admit a start and reserve its memory in one critical section.

Two starts on one GPU at the same moment each used to see the whole card free: neither
engine holds its memory yet while the other is admitted. So, per host:

- the admission (the planner's ``check_start`` on nvidia-smi's live figures) and the
  reservation of what was admitted happen inside one lock (gpumod.ops.locks);
- what other starts were admitted but do not hold yet (their reservation minus what
  their process tree already holds, nvidia-smi per process) counts as used;
- a reservation lasts while its service is starting and is dropped when it is ready
  (its memory is then in nvidia-smi's figures) or stopped. A reservation whose start
  died with its command (nobody holds the service's lock) is not counted.

Engines that measure free memory while they start (vLLM: ``profiles_memory_at_start``)
also start one at a time per GPU, from launch until healthy: vLLM's memory profiling
assumes its neighbours are still, and a neighbour loading at the same time shrinks or
breaks its KV cache. Others (llama.cpp with explicit -c/-ngl, commands with a declared
budget) start side by side, kept apart by their reservations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod.errors import CapacityError, RemoteCommandError
from gpumod.ops import locks, machine
from gpumod.ops.runtime import Runtime
from gpumod.store import services as services_table
from gpumod.store.db import Store

Output = Callable[[str], None]
MARGIN_MIB = 512   # what the planner keeps free per GPU


@dataclass
class Pending:
    """Memory admitted to other starts on a host that their processes do not hold yet."""

    mib: dict[int, int] = field(default_factory=dict)          # per GPU index
    names: dict[int, list[str]] = field(default_factory=dict)

    def describe(self, gpus: Any) -> str:
        parts = [f"{self.mib[g] / 1024:.1f} GiB on GPU {g} reserved by "
                 f"{', '.join(self.names[g])} (starting)" for g in sorted(gpus)
                 if self.mib.get(g)]
        return "; ".join(parts)


def pending(store: Store, rt: Runtime, snapshot: Any) -> Pending:
    """Reservations of the host's other starting services, less what they already hold."""
    return pending_on(store, rt.host.name, rt.transport, snapshot, exclude=rt.spec.name)


def pending_on(store: Store, host: str, transport: Any, snapshot: Any, *,
               exclude: str) -> Pending:
    """:func:`pending` for `host` (a start spanning pods asks it of each of its pods).

    A starting multi-node deployment counts on every pod it spans (its GPUs there, less
    what its Ray node's process tree holds), not only on its head's host.
    """
    from gpumod.hosts.processes import trees_memory
    from gpumod.ops.multinode import on_host

    starting = services_table.reserving(store, machine.Phase.STARTING.value)
    found = Pending()
    places: dict[str, tuple[tuple[int, ...], int | None]] = {}
    for spec in starting:
        if spec.name == exclude:
            continue
        spread = on_host(spec.extra, host)
        if spread is not None:
            places[spec.name] = spread
        elif spec.host == host:
            places[spec.name] = (spec.gpus, int(spec.pid) if spec.pid else None)
    live = [s for s in starting if s.name in places and locks.service_holder(s.name)]
    if not live:  # (a reservation whose start died with its command is not counted)
        return found
    roots = {s.name: root for s in live if (root := places[s.name][1])}
    held, _ = trees_memory(transport, snapshot, roots) if roots else ({}, "")
    for spec in live:
        have = held.get(spec.name)
        for gpu in places[spec.name][0]:
            left = int(spec.reserved_mib or 0) - (have.per_gpu.get(gpu, 0) if have else 0)
            if left > 0:
                found.mib[gpu] = found.mib.get(gpu, 0) + left
                found.names.setdefault(gpu, []).append(spec.name)
    return found


def with_pending(usage: list[Any], extra: Pending) -> list[Any]:
    """nvidia-smi's figures with the pending reservations counted as used."""
    out = []
    for u in usage:
        add = extra.mib.get(u.gpu.index, 0)
        if add:
            used = (u.used_mib if u.used_mib is not None else
                    u.gpu.memory_mib - (u.free_mib or 0)) + add
            free = None if u.free_mib is None else max(0, u.free_mib - add)
            u = replace(u, used_mib=used, free_mib=free)
        out.append(u)
    return out


def reservation(rt: Runtime, estimate: dict[str, Any] | None, usage: list[Any]) -> int | None:
    """MiB per GPU the start will hold: the planner's estimate, else the engine's settings."""
    if estimate and estimate.get("total_gib"):
        return int(float(estimate["total_gib"]) * 1024)
    totals = [u.gpu.memory_mib for u in usage if u.gpu.index in rt.spec.gpus]
    return rt.engine.declared_mib(rt.spec, min(totals)) if totals else rt.spec.vram_mib


def _refuse_over_reserved(rt: Runtime, need: int | None, usage: list[Any],
                          extra: Pending) -> None:
    """Where the planner did not check, still refuse what only reservations fill up."""
    if not need:
        return
    for u in usage:
        if u.gpu.index not in rt.spec.gpus or not extra.mib.get(u.gpu.index):
            continue
        used = u.used_mib if u.used_mib is not None else u.gpu.memory_mib - (u.free_mib or 0)
        free = u.gpu.memory_mib - used
        if need + MARGIN_MIB > free:
            raise CapacityError(
                f"{rt.spec.name} needs {need / 1024:.1f} GiB on GPU {u.gpu.index} but only "
                f"{max(0, free) / 1024:.1f} GiB is free once {extra.describe([u.gpu.index])}",
                hint="start it when the other start has finished, on another GPU, or "
                     "--force to start anyway")


def admit(store: Store, rt: Runtime, usage: list[Any] | None, *, force: bool,
          progress: Callable[[str], None]) -> tuple[Runtime, dict[str, Any] | None]:
    """Planner admission: memory settings computed, or CapacityError (unless force).

    Returns the runtime to launch (with the admitted engine args) and the estimate used.
    """
    from gpumod.ops.sizing import check_start

    admission = check_start(store, rt.host, rt.spec, usage, force=force)
    for note in admission.notes:
        progress(f"{rt.spec.name}: {note}")
    if tuple(admission.args) != tuple(rt.spec.args):
        rt = rt.with_args(admission.args)
    return rt, getattr(admission, "estimate", None)


def admit_and_reserve(store: Store, rt: Runtime, *, force: bool, progress: Output
                      ) -> tuple[Runtime, dict[str, Any] | None]:
    """Planner admission counting other starts' reservations, then this start's own."""
    with locks.admission_lock(rt.host.name, progress=progress):
        from gpumod.hosts.gpus import snapshot as take

        try:
            snap = take(rt.transport)
        except RemoteCommandError:  # nvidia-smi there but failing: no live figures
            snap = None
        if snap is None:
            rt, estimate = admit(store, rt, None, force=force, progress=progress)
            return rt, estimate
        extra = pending(store, rt, snap) if rt.spec.gpus else Pending()
        if extra.mib:
            progress(f"{rt.spec.name}: counting {extra.describe(rt.spec.gpus)}")
        usage = with_pending(list(snap.gpus), extra)
        try:
            rt, estimate = admit(store, rt, usage, force=force, progress=progress)
            need = reservation(rt, estimate, usage)
            if estimate is None and not force:
                _refuse_over_reserved(rt, need, usage, extra)
        except CapacityError as exc:
            held = extra.describe(rt.spec.gpus)
            if held and "reserved" not in exc.message:
                exc.message += f" ({held})"
            raise
        machine.reserve_memory(store, rt.spec.name, need if rt.spec.gpus else None)
        return rt, estimate


@contextlib.contextmanager
def start_turn(rt: Runtime, *, timeout: float, progress: Output) -> Iterator[None]:
    """The GPU start slots, for engines that profile memory at start (else nothing)."""
    if not (rt.engine.profiles_memory_at_start and rt.spec.gpus):
        yield
        return
    with locks.start_slots(rt.host.name, rt.spec.gpus, wait=timeout,
                           what=f"start {rt.spec.name}", progress=progress):
        yield
