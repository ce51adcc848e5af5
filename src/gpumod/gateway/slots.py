"""One model as the gateway sees it: its route, state, requests and waiters.

States: ready (answers), sleeping (process alive, memory given back), stopped,
starting / waking (an activation runs), resting (being put to sleep or stopped),
stopping (a stop by another command, or one not confirmed), unhealthy, unknown. Only
the scheduler changes a slot (from the event loop); the records are the lifecycle's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gpumod.ops.gateway_routes import Route
from gpumod.ops.idle import Activity

READY = "ready"
SLEEPING = "sleeping"
STOPPED = "stopped"
STARTING = "starting"
WAKING = "waking"
RESTING = "resting"
UNKNOWN = "unknown"
TRANSIENT = frozenset({STARTING, WAKING, RESTING})


@dataclass
class Slot:
    route: Route
    state: str = UNKNOWN
    activity: Activity = field(default_factory=Activity)
    waiters: list[asyncio.Future] = field(default_factory=list)
    activation: asyncio.Task | None = None
    draining_for: set[str] = field(default_factory=set)  # models waiting for our memory
    awake_mib: int | None = None       # learned when put to rest (per GPU)
    asleep_mib: int | None = None
    last_error: str = ""
    key: str | None = None             # the backend's own key, read from its env file
    key_loaded: bool = False
    generation: int = 0                # bumped on every change the scheduler makes

    def set(self, state: str) -> None:
        self.state = state
        self.generation += 1

    @property
    def name(self) -> str:
        return self.route.service

    def need_mib(self, totals: dict[int, int] | None = None) -> int | None:
        """Memory per GPU this model holds awake: learned, else declared, else its share."""
        if self.awake_mib or self.route.need_mib:
            return self.awake_mib or self.route.need_mib
        if self.route.memory_share and totals and self.route.gpus:
            sizes = [totals[g] for g in self.route.gpus if g in totals]
            return int(self.route.memory_share * min(sizes)) if sizes else None
        return None

    def to_bring_up_mib(self, totals: dict[int, int] | None = None) -> int | None:
        """Memory per GPU that must be free to bring it up from where it is now."""
        need = self.need_mib(totals)
        if need is None:
            return None
        if self.state == SLEEPING and self.asleep_mib is not None:
            return max(0, need - self.asleep_mib)
        return need

    def shares_gpu(self, other: Slot) -> bool:
        return bool(set(self.route.gpus) & set(other.route.gpus))

    def to_json(self, now: float) -> dict[str, Any]:
        idle = self.activity.idle_for(now) if self.state == READY else None
        return {"name": self.name, "served_model": self.route.served_model,
                "aliases": list(self.route.aliases), "engine": self.route.engine,
                "state": self.state, "in_flight": self.activity.in_flight,
                "queued": len(self.waiters),
                "idle_s": None if idle is None else round(idle, 1),
                "ttl_s": self.route.ttl, "gpus": list(self.route.gpus),
                "need_mib": self.need_mib(), "last_error": self.last_error or None}
