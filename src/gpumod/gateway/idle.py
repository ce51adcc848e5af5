"""The gateway's idle-TTL loop.

The rule and the action are gpumod.ops.idle's, shared with `gpumod watch`: a model
whose TTL has passed since the END of its last request, with nothing in flight or
queued, is put to rest (sleep where the engine can, else stop). The gateway sees
every request, so it needs no engine metrics to know a model is idle.
"""

from __future__ import annotations

import asyncio
import logging

from gpumod.gateway.errors import GatewayError
from gpumod.gateway.scheduler import Scheduler

log = logging.getLogger("gpumod.gateway")
TICK = 1.0


async def idle_loop(scheduler: Scheduler, *, tick: float = TICK) -> None:
    while True:
        await asyncio.sleep(tick)
        now = scheduler.clock()
        for slot in list(scheduler.slots.values()):
            if not scheduler.due(slot, now):
                continue
            try:
                await scheduler.rest_if_idle(slot)
            except GatewayError as err:
                log.warning("idle rest of %s failed: %s", slot.name, err.message)
            except Exception:  # the loop must outlive one bad service
                log.exception("idle rest of %s failed", slot.name)
