"""Checks that prove an engine works: health, a one-token canary answer, memory freed.

Nothing is believed on a 200 alone: a wake is proven by /health *and* a canary chat
request, a sleep by the engine's own state *and* its process tree's GPU memory dropping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gpumod.errors import EngineError
from gpumod.hosts.http import Endpoint


def wait_healthy(ep: Endpoint, path: str = "/health", *, timeout: float = 300,
                 interval: float = 0.5, alive: Callable[[], bool] | None = None,
                 what: str = "service") -> float:
    """Poll the health path until 200; raise EngineError on timeout or a dead process."""
    start = time.monotonic()
    last = "no answer yet"
    while True:
        answer = ep.request("GET", path, timeout=10)
        if answer.status == 200:
            return time.monotonic() - start
        last = answer.describe()
        if alive is not None and not alive():
            raise EngineError(f"{what} exited before it became healthy (last: {last})")
        if time.monotonic() - start > timeout:
            raise EngineError(f"{what} was not healthy within {timeout:g}s (last: {last})")
        time.sleep(interval)


def canary(ep: Endpoint, *, model: str | None = None, timeout: float = 120,
           what: str = "service") -> str:
    """One one-token chat request; returns the text. Raises EngineError unless it answers."""
    body = {"model": model or ep.served_model,
            "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1,
            "temperature": 0}
    answer = ep.request("POST", "/v1/chat/completions", body, timeout=timeout)
    data = answer.json()
    if answer.status != 200 or not isinstance(data, dict) or not data.get("choices"):
        raise EngineError(f"{what}: the canary request failed: {answer.describe()}")
    message = (data["choices"][0] or {}).get("message") or {}
    return str(message.get("content") or message.get("reasoning_content") or "")


def memory_dropped(before: int | None, after: int | None) -> bool | None:
    """Did a sleep free a real share of the memory? None when it could not be measured."""
    if before is None or after is None:
        return None
    if before <= 0:
        return True
    return before - after >= max(64, before * 0.25)
