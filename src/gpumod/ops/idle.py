"""Idle TTL: how long a service may sit idle, how idleness is counted, and what is done then.

One mechanism for `gpumod watch` and the gateway:

- :func:`parse_ttl` / :func:`format_ttl`: ``10m``, ``90s``, ``1h``, ``600`` (seconds) or
  ``never``; ``0`` is refused (llama-swap's ``ttl: 0`` means never, Ollama's keep_alive 0
  means at once: either reading would surprise someone).
- :func:`service_ttl`: a service's own TTL (``extra.idle_ttl``, set by ``--idle-ttl`` on
  `gpumod service add` and `pi start`) wins over the caller's default (the host default of
  the gateway, or `watch --idle-ttl` for the mode's sleep-on-idle services).
- :class:`Activity`: requests in flight and the END of the last one. Idle time is counted
  from that end and never while a request is in flight (llama-swap's rule). The gateway
  sees every request; `watch` cannot, so it calls :meth:`Activity.observe` when the
  engine's own counters show work.
- :func:`rest`: the idle action, the lifecycle's sleep: verified where the engine can sleep
  (with fallbacks down to stop; see ops.sleep), else a stop that keeps the record.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpumod.errors import UsageError

if TYPE_CHECKING:
    from gpumod.hosts.transports.base import Transport
    from gpumod.ops.sleep import SleepReport
    from gpumod.spec import ServiceSpec
    from gpumod.store.db import Store

NEVER = -1.0
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str | float | int) -> float:
    """'10m' -> 600.0, '90s' -> 90.0, '1h' -> 3600.0, '600' -> 600.0, 'never' -> NEVER."""
    raw = str(text).strip().lower()
    if raw in {"never", "off", "none", "-1"}:
        return NEVER
    match = _TTL.fullmatch(raw.replace(" ", ""))
    value = float(match.group(1)) * _UNITS[match.group(2)] if match else math.nan
    if not math.isfinite(value) or value > 365 * 86400:
        raise UsageError(f"invalid idle TTL {text!r}",
                         hint="use seconds or a duration like 90s, 10m, 1h; or 'never'")
    if value == 0:  # llama-swap's ttl 0 means "never": refuse the opposite meaning silently
        raise UsageError(f"an idle TTL of {text!r} would put the model to rest after every "
                         "request", hint="use 'never' to keep it loaded, or a duration such "
                                         "as 90s or 10m")
    return value


def format_ttl(seconds: float | None) -> str:
    """600 -> '10m', 90 -> '90s', 5400 -> '90m', None -> '-', NEVER -> 'never'."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "never"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def service_ttl(spec: ServiceSpec, default: float | None) -> float | None:
    """The idle TTL that applies to a service (seconds), or None when it never idles out."""
    raw = (spec.extra or {}).get("idle_ttl")
    try:
        ttl = default if raw is None else float(raw)
    except (TypeError, ValueError):
        ttl = default
    if ttl is None or ttl < 0:
        return None
    return ttl


def gateway_extra(idle_ttl: str | None, aliases: tuple[str, ...] | list[str] = ()
                  ) -> dict[str, Any]:
    """The `extra` keys `--idle-ttl` and `--alias` store on a service (validated)."""
    extra: dict[str, Any] = {}
    if idle_ttl is not None:
        extra["idle_ttl"] = parse_ttl(idle_ttl)
    names = []
    for raw in aliases:
        alias = raw.strip(" ")
        if not alias or len(alias) > 200 or any(ord(c) < 33 or ord(c) == 127 for c in alias):
            raise UsageError(f"invalid alias {raw!r}",
                             hint="an alias is one word of up to 200 printable characters")
        names.append(alias)
    if names:
        extra["aliases"] = names
    return extra


@dataclass
class Activity:
    """Requests in flight and when the last one ended (monotonic seconds)."""

    in_flight: int = 0
    last_end: float | None = None

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, now: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.last_end = now

    def observe(self, now: float) -> None:
        """Work seen from outside (engine counters moved, the model just woke)."""
        self.last_end = now

    def idle_for(self, now: float) -> float | None:
        """Seconds since the last request ended; None while one is in flight or none seen."""
        if self.in_flight or self.last_end is None:
            return None
        return max(0.0, now - self.last_end)

    def due(self, now: float, ttl: float | None) -> bool:
        idle = self.idle_for(now)
        return ttl is not None and idle is not None and idle >= ttl


def rest(store: Store, name: str, *, wait: float = 5.0, transport: Transport | None = None,
         progress: Callable[[str], None] | None = None) -> SleepReport:
    """The idle action, through the lifecycle: a verified sleep where the engine can (with
    fallbacks down to stop), else a stop; the record is kept (the next request or command
    starts it again). Takes the host and service locks (waiting up to `wait`).

    Returns the SleepReport (its `result` says 'asleep l1', 'stopped', ...).
    """
    from gpumod.ops import lifecycle

    return lifecycle.sleep(store, name, progress=progress or (lambda _m: None),
                           transport=transport, wait=wait)
