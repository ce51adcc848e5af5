"""The recorded states of a service and the moves between them (the lifecycle's state machine).

::

      stopped ──start──> starting ──healthy──> ready ──sleep──> sleeping
         ^  ^                │                   │  ^             │
         │  └──confirmed──┐  └─failed/cancelled┐ │  └────wake─────┘
         │                │                    v v
       failed <─confirmed─┴──────────────── stopping <──stop── (any)

- every move is written to the store in one transaction BEFORE the action it announces
  (`starting` before anything of the engine runs, `stopping` before a signal is sent);
- a start's process identity (its pid, or the unit or container name its supervisor
  derives from the service's name) is recorded before the engine may run;
- `stopped` / `failed` (or, for a `pi start` deployment, the removal of the record)
  are written only once the engine is confirmed gone; a cleanup that cannot confirm
  leaves the record `stopping` with a note saying why, shown by `pi list`, and
  `pi stop NAME` or `pi list --prune` finishes it;
- `unknown` is never recorded: it is what `pi list` shows while a host is unreachable.

The ready state is recorded as ``running``, the word `pi list` and the store have always
used; a definition never started may still read ``defined`` (treated as stopped).
Moves happen only under the service's lock (gpumod.ops.locks); the allowed-from check
in :func:`move` is the safety net that refuses a move from a state nobody expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from gpumod.errors import ConflictError
from gpumod.spec import ServiceSpec
from gpumod.store import services as table
from gpumod.store.db import Store


class Phase(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "running"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    FAILED = "failed"


NEVER_STARTED = "defined"
#: where each state may be entered from
ALLOWED: dict[Phase, frozenset[str]] = {
    Phase.STARTING: frozenset({"stopped", "defined", "failed"}),
    Phase.READY: frozenset({"starting", "sleeping", "running"}),
    Phase.SLEEPING: frozenset({"running", "sleeping"}),
    Phase.STOPPING: frozenset({"starting", "running", "sleeping", "stopping", "failed",
                               "stopped", "defined"}),
    Phase.STOPPED: frozenset({"stopping"}),
    Phase.FAILED: frozenset({"stopping"}),
}
#: states in which an engine may be running (or its cleanup is unconfirmed)
ACTIVE = frozenset({"starting", "running", "sleeping", "stopping"})
KEEP: Any = table.KEEP


@dataclass(frozen=True)
class StopResult:
    """What a confirmed stop did (single-pod or multi-node alike)."""

    name: str
    host: str
    outcome: str          # stopped | killed | not-running
    forgotten: bool       # the record was removed (a `pi start` deployment)


def move(store: Store, name: str, to: Phase, *, pid: Any = KEEP,
         note: str = "", reserved_mib: Any = KEEP) -> ServiceSpec:
    """Record `name` as `to` (with pid / reserved memory / note) in one transaction.

    Raises ConflictError when the recorded state does not allow the move.
    """
    with store.transaction():
        now = table.state(store, name)
        if now is None:
            raise ConflictError(f"{name} was removed while it was being changed")
        if now not in ALLOWED[to]:
            raise ConflictError(f"{name} is {now}; it cannot become {to.value} now",
                                hint="another gpumod command changed it; look at `pi list`")
        table.set_state(store, name, to.value, note=note, pid=pid, reserved_mib=reserved_mib)
        found = table.get(store, name)
    assert found is not None  # written in this transaction
    return found


def ready(store: Store, launched: ServiceSpec) -> ServiceSpec:
    """A `pi start` deployment became healthy: record it as launched (args, env, pid)."""
    done = launched.with_(state=Phase.READY.value, reserved_mib=None, note="")
    with store.transaction():
        now = table.state(store, done.name)
        if now is None or now not in ALLOWED[Phase.READY]:
            raise ConflictError(f"{done.name} is no longer starting",
                                hint="another gpumod command changed it; look at `pi list`")
        table.replace(store, done)
    return done


def record_identity(store: Store, name: str, pid: int | None) -> None:
    """The start's process identity, recorded while the record says starting."""
    with store.transaction():
        if table.state(store, name) != Phase.STARTING.value:
            raise ConflictError(f"{name} is no longer starting; its engine is not run")
        table.set_pid(store, name, pid)


def mirror(store: Store, name: str, state: str, *, pid: Any = KEEP) -> None:
    """Record a state that the service's own host reached without us (a pod-side gateway
    woke, slept or stopped it under the pod's lifecycle): a report of a move made there,
    so there is no allowed-from check (the note of the state it leaves goes, as in
    :func:`move`); an unknown state word is refused."""
    if state != NEVER_STARTED:
        Phase(state)  # ValueError for a word that is no state
    table.set_state(store, name, state, pid=pid)


def reserve_memory(store: Store, name: str, mib: int | None) -> None:
    """Memory admitted for a start, counted for other starts until it is ready."""
    table.set_reserved(store, name, mib)


def forget(store: Store, name: str) -> None:
    """Drop a record (a `pi start` deployment whose engine is confirmed gone)."""
    table.delete(store, name)
