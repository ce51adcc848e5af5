"""Wake on request, joined waits, LRU eviction and per-model queues.

A request for a ready model goes straight through (its in-flight count goes up). Any
other request becomes a waiter of its model and the model gets ONE activation task;
later requests for the same model join it (llama-swap's rule), and all of them are
granted together when it is ready, or all get the same error.

An activation, one at a time per host (the swap lock), makes room first: with the
model's memory known (declared, planned, or learned when it was last put to rest)
and nvidia-smi's free figures, idle models on the same GPUs are put to rest (sleep
where the engine can, else stop), least recently used first, sleeping ones stopped
last; a model with requests in flight is never touched, nor one that a model which is
up depends on (it calls it directly, past the gateway). If only busy models stand in
the way, they are marked *draining*: they finish what they serve, new requests for
them queue behind, and once idle they are put to rest. So two models that cannot
share a GPU alternate in batches (A A B B), never per request, and every wait is
bounded (`queue_wait`): past it the request gets a 503 with Retry-After. With the
memory unknown, the lifecycle's own admission (or the engine's out-of-memory error)
says whether it fits; then one idle model is put to rest per failed try.

The scheduler decides *when* and *which*; every change to a service is made by the
lifecycle (through gpumod.gateway.adapter), which records it and takes the service's
lock, so a `pi stop` or `gpumod watch` at the same moment is serialised with it. A
slot's state is only the gateway's view: set from what the lifecycle calls returned,
and re-read from the live probe every `refresh` seconds.

Errors: 503 cannot fit (with the reason) or the engine failed to start (with its
error line), 504 the wake or start took too long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpumod.errors import GpumodError
from gpumod.gateway.adapter import ActivationFailed, Lifecycle, read_key
from gpumod.gateway.errors import ClientGone, GatewayError
from gpumod.gateway.slots import (
    READY,
    RESTING,
    SLEEPING,
    STARTING,
    STOPPED,
    TRANSIENT,
    UNKNOWN,
    WAKING,
    Slot,
)
from gpumod.ops.gateway_config import GatewayConfig
from gpumod.ops.gateway_routes import Router

log = logging.getLogger("gpumod.gateway")


class Scheduler:
    def __init__(self, lifecycle: Lifecycle, config: GatewayConfig, metrics: Any, *,
                 clock: Callable[[], float] = time.monotonic, workers: int = 4) -> None:
        self.lifecycle = lifecycle
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.slots: dict[str, Slot] = {}
        self.router = Router([])
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway")
        self.swap: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._background: set[asyncio.Future] = set()

    # -- set-up and state -------------------------------------------------------------
    async def start(self) -> None:
        self.swap = asyncio.Lock()
        self._changed = asyncio.Event()
        await self.refresh()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def refresh(self, *, routes: bool = True) -> None:
        """Re-read the route table (new services) and every model's real state."""
        if routes:
            table = await self.call(self.lifecycle.routes, self.config.default_ttl)
            for route in table:
                slot = self.slots.get(route.service)
                if slot is None:
                    self.slots[route.service] = Slot(route)
                else:
                    slot.route = route
            gone = {r.service for r in table}
            for name in [n for n in self.slots if n not in gone]:
                slot = self.slots[name]
                if not slot.activity.in_flight and slot.activation is None:
                    del self.slots[name]
            self.router = Router([s.route for s in self.slots.values()])
        before = {name: slot.generation for name, slot in self.slots.items()}
        states = await self.call(self.lifecycle.states)
        now = self.clock()
        for name, state in states.items():
            slot = self.slots.get(name)
            if slot is None or self._acting_on(slot) \
                    or slot.activity.in_flight or before.get(name) != slot.generation:
                continue  # busy, or changed by the scheduler since the probe began
            if state == READY and slot.state != READY:
                slot.activity.observe(now)  # idle time counts from when we saw it up
            if state != slot.state:
                slot.set(state)
        self._notify()

    def _forget(self, slot: Slot) -> GatewayError:
        """A service removed behind the gateway: no longer routed at once (a refresh would
        drop it up to `refresh` seconds later); returns the 404 its requests get."""
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
            self.router = Router([s.route for s in self.slots.values()])
        slot.set(STOPPED)
        return GatewayError(404, f"model not found: its service {slot.name!r} was removed; "
                                 f"known: {', '.join(self.known()) or 'none'}", "model_not_found")

    async def removed(self, slot: Slot) -> GatewayError | None:
        """After a refused connection: the 404 to answer if the service was removed (one
        read of the records, no probe), else None."""
        try:
            table = await self.call(self.lifecycle.routes, self.config.default_ttl)
        except Exception as exc:  # the store is busy: answer the 502, the refresh catches up
            log.warning("reading the routes failed: %s", exc)
            return None
        if any(route.service == slot.name for route in table):
            return None
        return self._forget(slot)

    def resolve(self, model: str) -> Slot | None:
        route = self.router.resolve(model)
        return self.slots.get(route.service) if route else None

    def known(self) -> list[str]:
        return self.router.known()

    def backend_key(self, slot: Slot) -> str | None:
        if not slot.key_loaded:
            slot.key = read_key(slot.route.key_file, slot.route.key_var)
            slot.key_loaded = True
        return slot.key

    def reload_key(self, slot: Slot) -> str | None:
        """The backend's key read again (it answered 401: restarted with another key?)."""
        slot.key_loaded = False
        return self.backend_key(slot)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- requests -----------------------------------------------------------------------
    async def acquire(self, slot: Slot, gone: asyncio.Event) -> None:
        """Return once `slot` is ready and this request is counted in flight.

        Raises GatewayError (503/504) or ClientGone (the client left while waiting).
        """
        if slot.state == READY and not slot.draining_for and not slot.waiters:
            slot.activity.begin()
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        slot.waiters.append(fut)
        self._ensure_activation(slot)
        watcher = asyncio.ensure_future(gone.wait())
        limit = self.config.queue_wait + self.config.start_timeout + 60
        try:
            await asyncio.wait({fut, watcher}, timeout=limit,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(slot, fut)
            raise
        finally:
            watcher.cancel()
        if fut.done() and not fut.cancelled() and fut.exception() is None \
                and not gone.is_set():
            return
        if fut.done() and not fut.cancelled() and fut.exception() is not None \
                and not gone.is_set():
            raise fut.exception()  # type: ignore[misc]
        self._abandon(slot, fut)
        if gone.is_set():
            raise ClientGone()
        raise GatewayError(504, f"{slot.name} was not ready within {limit:g}s", "timeout")

    def _abandon(self, slot: Slot, fut: asyncio.Future) -> None:
        """A waiter that will not use its grant: give back what it got, leave the queue."""
        if fut in slot.waiters:
            slot.waiters.remove(fut)
            if not slot.waiters:
                self._notify()  # a queued activation may now have nobody to serve
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            self.release(slot)  # granted just as the client left

    def release(self, slot: Slot) -> None:
        slot.activity.end(self.clock())
        if not slot.activity.in_flight:
            self._notify()

    def backend_failed(self, slot: Slot) -> None:
        """The backend refused or dropped a request: learn its real state soon."""
        task = asyncio.ensure_future(self._reprobe(slot))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reprobe(self, slot: Slot) -> None:
        before = slot.generation
        try:
            state = await self._probe(slot)
        except Exception as exc:  # a probe is best effort; the next refresh tries again
            log.warning("probe of %s failed: %s", slot.name, exc)
            return
        if not self._acting_on(slot) \
                and slot.generation == before:
            slot.set(state)

    @staticmethod
    def _acting_on(slot: Slot) -> bool:
        """The scheduler is changing it (an activation, or putting it to rest): its state is
        the scheduler's until that ends. A 'starting' seen by a probe (another command's
        start) is not: the next probe updates it."""
        return slot.activation is not None or slot.state == RESTING

    def engine_asleep(self, slot: Slot) -> None:
        """The engine answered that it sleeps (put to sleep behind our back): wake it next."""
        if slot.activation is None and slot.state == READY:
            slot.set(SLEEPING)

    # -- activation -----------------------------------------------------------------------
    def _grant(self, slot: Slot) -> None:
        for fut in slot.waiters:
            if not fut.done():
                slot.activity.begin()
                fut.set_result(None)
        slot.waiters.clear()

    def _fail(self, slot: Slot, err: GatewayError) -> None:
        for fut in slot.waiters:
            if not fut.done():
                fut.set_exception(err)
        slot.waiters.clear()

    def _ensure_activation(self, slot: Slot) -> None:
        if slot.activation is None or slot.activation.done():
            slot.activation = asyncio.ensure_future(self._activate(slot))

    async def _activate(self, slot: Slot) -> None:
        try:
            await self._bring_up(slot)
        except GatewayError as err:
            slot.last_error = err.message
            log.warning("%s: %s", slot.name, err.message)
            self._fail(slot, err)
        except Exception as exc:  # a bug must not leave requests hanging
            log.exception("activation of %s failed", slot.name)
            self._fail(slot, GatewayError(500, f"internal error: {type(exc).__name__}: {exc}",
                                          "internal_error"))
        finally:
            for other in self.slots.values():
                other.draining_for.discard(slot.name)
            slot.activation = None
            self._notify()
            if slot.waiters:
                if slot.state == READY and not slot.draining_for:
                    self._grant(slot)
                else:
                    self._ensure_activation(slot)

    async def _bring_up(self, slot: Slot) -> None:
        assert self.swap is not None
        deadline = self.clock() + self.config.queue_wait
        why = ""
        while True:
            if not any(not fut.done() for fut in slot.waiters):
                return  # every client left while queued: put nobody to rest for nobody
            if slot.draining_for:
                await self._wait_change(deadline, f"{slot.name} waited for "
                                        f"{', '.join(sorted(slot.draining_for))} to use the GPU")
                continue
            if slot.state == READY:
                self._grant(slot)
                return
            async with self.swap:
                if slot.state == READY and not slot.draining_for:
                    self._grant(slot)
                    return
                if not any(not fut.done() for fut in slot.waiters):
                    return  # they left while we waited for the swap lock
                if not slot.draining_for:
                    blockers = await self._make_room(slot)
                    if not blockers:
                        await self._bring_up_now(slot)
                        return
                    for blocker in blockers:
                        blocker.draining_for.add(slot.name)
                    why = (f"{slot.name} waited {self.config.queue_wait:g}s for "
                           f"{', '.join(b.name for b in blockers)} to finish their requests "
                           "(they hold the GPU memory it needs)")
            await self._wait_change(deadline, why or f"{slot.name} waited too long")

    async def _wait_change(self, deadline: float, why: str) -> None:
        assert self._changed is not None
        remaining = deadline - self.clock()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
                return
            except TimeoutError:
                pass
        raise GatewayError(503, why, "queue_timeout", retry_after=min(60.0, self.config.queue_wait))

    def _pick_victim(self, slot: Slot) -> Slot | None:
        """The least recently used idle model on the same GPUs (sleeping ones last)."""
        candidates = []
        for other in self.slots.values():
            if other is slot or not other.shares_gpu(slot) or other.activity.in_flight \
                    or (other.activation is not None and other.state in TRANSIENT) \
                    or self._needed(other):
                continue
            if other.state in (READY, "unhealthy"):
                tier = 0
            elif other.state == SLEEPING and other.asleep_mib != 0:
                tier = 1
            else:
                continue
            candidates.append((tier, other.activity.last_end or float("-inf"), other.name, other))
        return min(candidates)[3] if candidates else None

    def _dependencies(self, slot: Slot) -> list[Slot]:
        """The models `slot` depends on, directly or not (activate brings them up first)."""
        found: dict[str, Slot] = {}
        todo = list(slot.route.depends_on)
        while todo:
            dep = self.slots.get(todo.pop())
            if dep is not None and dep.name not in found and dep is not slot:
                found[dep.name] = dep
                todo.extend(dep.route.depends_on)
        return list(found.values())

    def _needed(self, slot: Slot) -> bool:
        """Another model that is up depends on it (and calls it directly, not through us)."""
        return any(slot.name in other.route.depends_on and other.state not in (STOPPED, SLEEPING)
                   for other in self.slots.values() if other is not slot)

    async def _make_room(self, slot: Slot) -> list[Slot]:
        """Put idle models to rest until `slot` fits; returns the busy ones in the way."""
        gpus = slot.route.gpus
        if not gpus or slot.to_bring_up_mib({g: 1 << 30 for g in gpus}) is None:
            return []  # memory unknown: the lifecycle's admission decides
        alone = not any(o is not slot and o.shares_gpu(slot) and o.state not in (STOPPED, UNKNOWN)
                        for o in self.slots.values())
        if alone and slot.route.need_mib is None:
            return []  # nobody to make room from, no declared budget to check: no nvidia-smi
        free = await self.call(self.lifecycle.free_mib)
        if free is None or any(g not in free for g in gpus):
            return []  # no figures: the lifecycle's admission decides
        need = slot.to_bring_up_mib({g: total for g, (_, total) in free.items()}) or 0
        margin = self.config.margin_mib
        for g in gpus:
            if need + margin > free[g][1]:
                raise GatewayError(503, f"{slot.name} needs {need} MiB on GPU {g}, which has "
                                        f"{free[g][1]} MiB in all", "model_cannot_fit")
        while True:
            short = [g for g in gpus if need + margin > free[g][0]]
            if not short:
                return []
            victim = self._pick_victim(slot)
            if victim is None:
                busy = [o for o in self.slots.values() if o is not slot and o.state == READY
                        and o.activity.in_flight and o.shares_gpu(slot)]
                if busy:
                    return busy
                g = short[0]
                raise GatewayError(503, f"{slot.name} needs {need} MiB free on GPU {g} but "
                                        f"{free[g][0]} MiB are free and no idle model is left "
                                        "to put to sleep", "model_cannot_fit")
            await self._evict(victim, f"to make room for {slot.name}")
            free = await self.call(self.lifecycle.free_mib) or free

    async def _evict(self, victim: Slot, reason: str) -> None:
        before = victim.state
        victim.set(RESTING)
        began = self.clock()
        try:
            if before == SLEEPING:
                rested = await self.call(self.lifecycle.stop, victim.name)
            else:
                rested = await self.call(self.lifecycle.rest, victim.name)
        except (GpumodError, OSError) as exc:
            victim.set(await self._probe(victim))
            message = getattr(exc, "message", str(exc))
            victim.last_error = message
            raise GatewayError(503, f"could not put {victim.name} to rest {reason}: {message}",
                               "evict_failed") from exc
        victim.set(rested.state)
        if rested.state == STOPPED:  # the lifecycle stopped its (sleeping) dependents first
            for other in self.slots.values():
                if victim.name in other.route.depends_on and other.state == SLEEPING:
                    other.set(STOPPED)
        if rested.awake_mib:
            victim.awake_mib = rested.awake_mib
        if rested.asleep_mib is not None:
            victim.asleep_mib = rested.asleep_mib
        elif rested.state != SLEEPING:
            victim.asleep_mib = 0
        self.metrics.evicted(victim.name, rested.state, self.clock() - began)
        log.info("%s: %s %s (%s)", victim.name, rested.state, reason, rested.detail)
        self._notify()
        if victim.waiters:
            self._ensure_activation(victim)

    async def _bring_up_now(self, slot: Slot) -> None:
        kind = "wake" if slot.state == SLEEPING else "start"
        slot.set(WAKING if kind == "wake" else STARTING)
        began = self.clock()
        while True:
            try:
                outcome = await asyncio.wait_for(self.call(self.lifecycle.activate, slot.name),
                                                 self.config.start_timeout + 60)
                break
            except ActivationFailed as exc:
                if exc.kind == "gone":
                    self.metrics.activation(slot.name, kind, "failed", self.clock() - began)
                    raise self._forget(slot) from None
                if exc.kind == "capacity":
                    victim = self._pick_victim(slot)
                    if victim is not None:
                        await self._evict(victim, f"to make room for {slot.name}")
                        continue
                slot.set(await self._probe(slot))
                self.metrics.activation(slot.name, kind, "failed", self.clock() - began)
                raise _activation_error(slot.name, exc) from exc
            except TimeoutError:
                slot.set(UNKNOWN)
                self.metrics.activation(slot.name, kind, "timeout", self.clock() - began)
                raise GatewayError(504, f"{slot.name} was not ready within "
                                        f"{self.config.start_timeout:g}s", "start_timeout") from None
        now = self.clock()
        for up in [slot, *self._dependencies(slot)]:  # the lifecycle brought those up first
            if up is slot or not self._acting_on(up):
                up.set(READY)
                up.activity.observe(now)
        slot.key_loaded = False  # a start writes a new env file
        slot.last_error = ""
        took = now - began
        self.metrics.activation(slot.name, {"woke": "wake", "started": "start"}.get(
            outcome, kind), "ok", took)
        log.info("%s: %s in %.2fs for %d waiting request(s)", slot.name, outcome, took,
                 len(slot.waiters))
        self._grant(slot)

    async def _probe(self, slot: Slot) -> str:
        try:
            states = await self.call(self.lifecycle.states)
        except (GpumodError, OSError):
            return UNKNOWN
        return states.get(slot.name, UNKNOWN)

    # -- idle ---------------------------------------------------------------------------
    def due(self, slot: Slot, now: float) -> bool:
        return (slot.state == READY and slot.activation is None and not slot.waiters
                and not slot.draining_for and slot.activity.due(now, slot.route.ttl)
                and not self._needed(slot))

    async def rest_if_idle(self, slot: Slot) -> bool:
        """Put `slot` to rest if its TTL has passed (checked again under the swap lock)."""
        assert self.swap is not None
        async with self.swap:
            if not self.due(slot, self.clock()):
                return False
            await self._evict(slot, f"after {slot.route.ttl:g}s idle")
            return True

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [slot.to_json(now) for slot in sorted(self.slots.values(), key=lambda s: s.name)]


def _activation_error(name: str, exc: ActivationFailed) -> GatewayError:
    if exc.kind == "capacity":
        return GatewayError(503, f"{name} does not fit: {exc.message}", "model_cannot_fit")
    if exc.kind == "timeout":
        return GatewayError(504, f"{name} did not become ready: {exc.message}", "start_timeout")
    if exc.kind == "busy":
        return GatewayError(503, exc.message, "host_busy", retry_after=10)
    return GatewayError(503, f"{name} failed to start: {exc.message}", "engine_failed")


__all__ = ["ClientGone", "Scheduler"]
