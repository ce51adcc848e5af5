"""Sleep support: a capability of an engine class (a mixin), not a lookup by name.

- ``VLLMSleep``: levels 1 and 2 through vLLM's dev endpoints (``POST /sleep?level=N``,
  ``POST /wake_up``, ``GET /is_sleeping``). Level 2 discards the weights, so its wake is
  ``wake_up?tags=weights`` -> ``POST /collective_rpc {"method": "reload_weights"}`` ->
  ``wake_up?tags=kv_cache`` -> ``POST /reset_prefix_cache``. The endpoints exist only with
  ``VLLM_SERVER_DEV_MODE=1`` and have no authentication, so the vLLM engine's launch
  preparation forces the engine onto 127.0.0.1 (``gpumod.engines.vllm``).
- ``RouterSleep``: llama.cpp's ``llama-server`` router mode. Sleep unloads the model(s)
  (``POST /models/unload``), wake loads one (``POST /models/load``); both wait until
  ``GET /models`` really says ``unloaded`` / ``loaded``.

:func:`sleep_capability` says whether an engine can sleep as a service asks
(``isinstance`` on the mixin, and the service's sleep mode among its levels). The
verification (engine state, GPU memory, canary) is in ``gpumod.ops.sleep``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gpumod.errors import EngineError, UsageError

if TYPE_CHECKING:  # annotations only: listings import the engines, never their HTTP client
    from gpumod.hosts.http import Endpoint


class SleepCapable:
    """Mixin: an engine that can give its GPU memory back without stopping."""

    levels: tuple[str, ...] = ()

    def sleep(self, ep: Endpoint, level: str) -> None:
        raise NotImplementedError

    def wake(self, ep: Endpoint, level: str) -> None:
        raise NotImplementedError

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        raise NotImplementedError

    def canary_model(self, ep: Endpoint) -> str:
        return ep.served_model


class VLLMSleep(SleepCapable):
    levels = ("l1", "l2")

    def sleep(self, ep: Endpoint, level: str) -> None:
        number = {"l1": 1, "l2": 2}.get(level)
        if number is None:
            raise UsageError(f"vLLM sleep level must be l1 or l2, not {level!r}")
        ep.expect("POST", f"/sleep?level={number}", what=f"vLLM sleep level {number}",
                  timeout=300)

    def wake(self, ep: Endpoint, level: str) -> None:
        if level == "l2":
            ep.expect("POST", "/wake_up?tags=weights", what="vLLM wake (weights)", timeout=300)
            answer = ep.expect("POST", "/collective_rpc", {"method": "reload_weights"},
                               what="vLLM reload_weights", timeout=600)
            data = answer.json()
            if isinstance(data, dict) and data.get("error"):
                raise EngineError(f"vLLM reload_weights: {data['error']}")
            ep.expect("POST", "/wake_up?tags=kv_cache", what="vLLM wake (kv_cache)",
                      timeout=300)
            ep.expect("POST", "/reset_prefix_cache", what="vLLM reset_prefix_cache")
        else:
            ep.expect("POST", "/wake_up", what="vLLM wake", timeout=300)

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        answer = ep.request("GET", "/is_sleeping", timeout=15)
        data = answer.json()
        if answer.status == 404:
            raise EngineError("vLLM has no /is_sleeping: it runs without VLLM_SERVER_DEV_MODE=1",
                              hint="restart the service so gpumod can enable sleep mode")
        if answer.status != 200 or not isinstance(data, dict) or "is_sleeping" not in data:
            raise EngineError(f"vLLM /is_sleeping: {answer.describe()}")
        return bool(data["is_sleeping"])


class RouterSleep(SleepCapable):
    """llama-server router mode: unload/load models and wait for the real status."""

    levels = ("router",)
    router_poll: float = 0.2        # seconds between /models checks
    router_timeout: float = 300.0   # how long a load or unload may take

    def models(self, ep: Endpoint) -> dict[str, str]:
        answer = ep.expect("GET", "/models", what="llama-server /models", timeout=30)
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise EngineError(f"llama-server /models: unexpected answer {answer.describe()}")
        out: dict[str, str] = {}
        for item in data["data"]:
            status = item.get("status")
            value = status.get("value") if isinstance(status, dict) else status
            out[str(item.get("id"))] = str(value or "unknown")
        return out

    def wait_status(self, ep: Endpoint, model: str, wanted: set[str]) -> str:
        deadline = time.monotonic() + self.router_timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.models(ep).get(model, "missing")
            if status in wanted:
                return status
            if status in {"missing", "failed", "error"}:
                break
            time.sleep(self.router_poll)
        raise EngineError(f"llama-server: model {model!r} is {status}, expected "
                          f"{' or '.join(sorted(wanted))}")

    def loaded(self, ep: Endpoint) -> list[str]:
        return [m for m, s in self.models(ep).items() if s in {"loaded", "loading"}]

    def sleep(self, ep: Endpoint, level: str = "router") -> None:
        for model in self.loaded(ep):
            ep.expect("POST", "/models/unload", {"model": model},
                      what=f"llama-server unload {model}", timeout=120)
            self.wait_status(ep, model, {"unloaded", "sleeping"})

    def wake(self, ep: Endpoint, level: str = "router", model: str | None = None) -> None:
        model = model or self.canary_model(ep)
        status = self.models(ep).get(model)
        if status is None:
            raise EngineError(f"llama-server has no model {model!r}",
                              hint=f"known: {', '.join(self.models(ep)) or 'none'}")
        if status != "loaded":
            ep.expect("POST", "/models/load", {"model": model},
                      what=f"llama-server load {model}", timeout=120)
            self.wait_status(ep, model, {"loaded"})

    def is_sleeping(self, ep: Endpoint) -> bool | None:
        return not self.loaded(ep)

    def canary_model(self, ep: Endpoint) -> str:
        if ep.served_model:
            return ep.served_model
        models = sorted(self.models(ep))
        if not models:
            raise EngineError("llama-server router has no models in its folder")
        return models[0]


def sleep_capability(engine: Any, sleep_mode: str) -> SleepCapable | None:
    """The engine itself when its class can sleep at the service's sleep mode, else None."""
    if isinstance(engine, SleepCapable) and sleep_mode in engine.levels:
        return engine
    return None
