"""The ONE place the gateway calls the service lifecycle.

Everything the gateway does to a service goes through :class:`Lifecycle`: read the
route table from the service records, read the services' live states, bring one up
(wake, verified, as `gpumod service wake`; or start, dependencies first, as `gpumod
service start`), put one to rest (the idle action of gpumod.ops.idle: sleep where the
engine can, else stop), stop one, and read the GPUs' free memory. When the lifecycle
becomes an explicit state machine, this file is the one that changes.

The methods are blocking (SSH-free here: the gateway runs on the services' host, so the
transport is local) and run in the gateway's worker threads; each thread has its own
store connection (`open_store` caches one per thread).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

from gpumod.errors import CapacityError, ConflictError, GpumodError
from gpumod.gateway.config import Route

# ops.states' words -> the gateway's
SLOT_STATES = {"running": "ready", "sleeping": "sleeping", "starting": "starting",
               "unhealthy": "unhealthy", "crashed": "stopped", "stopped": "stopped",
               "unreachable": "unknown", "unknown": "unknown"}
# An engine that failed because the GPU memory was taken: evicting someone may help.
_MEMORY = re.compile(r"Free memory on device|out of memory|No available memory for the cache|"
                     r"cudaMalloc|failed to allocate|CUDA error: out of memory", re.I)
_TIMEOUT = re.compile(r"not healthy within|did not finish within|no answer within", re.I)


class ActivationFailed(Exception):
    """A wake or start that did not end ready. kind: capacity | timeout | engine | busy."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Rested:
    """A service put to rest: its new state and its memory per GPU before and after."""

    state: str                     # sleeping | stopped
    detail: str
    awake_mib: int | None = None
    asleep_mib: int | None = None


def classify(exc: GpumodError) -> ActivationFailed:
    if isinstance(exc, CapacityError) or _MEMORY.search(exc.message):
        return ActivationFailed("capacity", exc.message)
    if isinstance(exc, ConflictError):
        return ActivationFailed("busy", exc.message)
    if _TIMEOUT.search(exc.message):
        return ActivationFailed("timeout", exc.message)
    return ActivationFailed("engine", exc.message)


def _per_gpu(mib: int | None, gpus: tuple[int, ...]) -> int | None:
    return None if mib is None else int(mib / max(1, len(gpus)))


class Lifecycle:
    def __init__(self, host: str, *, start_timeout: float = 600.0) -> None:
        self.host = host
        self.start_timeout = start_timeout

    def _store(self) -> Any:
        from gpumod.store.db import open_store

        return open_store()

    # -- reading ----------------------------------------------------------------
    def routes(self, default_ttl: float | None) -> list[Route]:
        from gpumod.engines.base import get_engine
        from gpumod.engines.sleep import capability_for
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops.idle import service_ttl
        from gpumod.ops.launch import bind_address, probe_address, service_dir
        from gpumod.ops.services import list_services

        store = self._store()
        host = hosts_ops.get_host(store, self.host)
        routes = []
        for spec in list_services(store, self.host):
            try:
                engine = get_engine(spec.engine)
                address = probe_address(bind_address(spec, host))
            except GpumodError:
                continue
            aliases = tuple(str(a) for a in spec.extra.get("aliases") or ())
            served = str(spec.extra.get("served_model") or engine.served_model(spec))
            backend_models: tuple[str, ...] = ()
            if spec.sleep_mode == "router":
                models = router_models(spec.model)
                served = str((spec.extra.get("router") or {}).get("default_model")
                             or (models[0] if models else spec.name))
                backend_models = tuple(m for m in models if m != served)
            routes.append(Route(
                service=spec.name, served_model=served,
                aliases=aliases + backend_models, backend_models=backend_models,
                backend=f"http://{address}:{spec.port}", engine=spec.engine,
                key_file=os.path.join(service_dir(host, spec.name), "secrets.env"),
                key_var=engine.secret_env, gpus=tuple(spec.gpus),
                need_mib=int(spec.vram_mib) if spec.vram_mib else None,
                memory_share=memory_share(spec), ttl=service_ttl(spec, default_ttl),
                can_sleep=capability_for(spec.engine, spec.sleep_mode) is not None))
        return routes

    def states(self) -> dict[str, str]:
        """Every service's live state (one probe of the host), in the gateway's words."""
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops.services import list_services
        from gpumod.ops.states import host_status

        store = self._store()
        host = hosts_ops.get_host(store, self.host)
        statuses = host_status(store, host, list_services(store, self.host))
        return {st.spec.name: SLOT_STATES.get(st.state, "unknown") for st in statuses}

    def free_mib(self) -> dict[int, tuple[int, int]] | None:
        """{GPU index: (free MiB, total MiB)} from nvidia-smi now; None without one."""
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops.launch import gpu_usage

        host = hosts_ops.get_host(self._store(), self.host)
        usage = gpu_usage(hosts_ops.transport_for(host))
        if usage is None:
            return None
        out = {}
        for u in usage:
            total = int(u.gpu.memory_mib)
            free = u.free_mib if u.free_mib is not None else total - int(u.used_mib or 0)
            out[u.gpu.index] = (int(free), total)
        return out

    # -- acting -------------------------------------------------------------------
    def activate(self, name: str) -> str:
        """Bring a service up and verified: 'woke' or 'started'. Raises ActivationFailed."""
        from gpumod.ops import lifecycle
        from gpumod.ops.sleep import wake_runtime

        store = self._store()
        try:
            spec = lifecycle.get_service(store, name)
            rt = lifecycle.runtime(store, spec)
            if rt.alive():  # asleep, starting or unhealthy: wake (health + canary), else restart
                if spec.state == "starting":  # started elsewhere: let it finish, do not restart
                    from gpumod.engines.sleep import wait_healthy

                    wait_healthy(rt.endpoint, rt.health_path, timeout=self.start_timeout,
                                 alive=rt.alive, what=name)
                with lifecycle.host_lock(spec.host, wait=self.start_timeout,
                                         what=f"gateway wake {name}"):
                    report = wake_runtime(store, rt, timeout=self.start_timeout,
                                          measure=False)
                if not report.ok:
                    raise classify(GpumodError(report.summary()))
                return "woke"
            lifecycle.start_service(store, name, timeout=self.start_timeout,
                                    lock_wait=self.start_timeout)
            return "started"
        except GpumodError as exc:
            raise classify(exc) from exc

    def rest(self, name: str) -> Rested:
        """The idle action (sleep where the engine can, else stop), as watch does it."""
        from gpumod.ops import lifecycle
        from gpumod.ops.idle import rest

        store = self._store()
        spec = lifecycle.get_service(store, name)
        with lifecycle.host_lock(spec.host, wait=self.start_timeout,
                                 what=f"gateway puts {name} to rest"):
            rt = lifecycle.runtime(store, spec)
            if not rt.alive():
                lifecycle.save_state(store, name, "stopped", None)
                return Rested("stopped", "was not running")
            report = rest(store, rt)
        if not report.ok:
            raise GpumodError(report.summary())
        state = "stopped" if report.result == "stopped" else "sleeping"
        return Rested(state, report.summary(), _per_gpu(report.memory_before_mib, spec.gpus),
                      _per_gpu(report.memory_after_mib, spec.gpus))

    def stop(self, name: str) -> Rested:
        from gpumod.ops import lifecycle

        store = self._store()
        spec = lifecycle.get_service(store, name)
        with lifecycle.host_lock(spec.host, wait=self.start_timeout,
                                 what=f"gateway stops {name}"):
            lifecycle.stop_one(store, lifecycle.runtime(store, spec))
        return Rested("stopped", "stopped to free its memory")


def memory_share(spec: Any) -> float | None:
    """vLLM's --gpu-memory-utilization: the share of each GPU's total it takes awake."""
    if spec.engine != "vllm":
        return None
    from gpumod.engines.base import flag_value

    share = flag_value(spec.args, ("--gpu-memory-utilization",))
    try:
        return float(share) if share else None
    except ValueError:
        return None


def router_models(models: str) -> list[str]:
    """Model names a llama-server router serves: its folder's GGUF files or preset sections."""
    try:
        if models.endswith(".ini"):
            parser = configparser.ConfigParser()
            parser.read(models)
            return sorted(parser.sections())
        return sorted(f[:-5] for f in os.listdir(models) if f.lower().endswith(".gguf"))
    except (OSError, configparser.Error):
        return []


def read_key(path: str | None, var: str | None) -> str | None:
    """The backend's own key from its 0600 env file (KEY='value' lines); None if absent."""
    if not path or not var:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                name, sep, value = line.strip().partition("=")
                if sep and name == var:
                    words = shlex.split(value)
                    return words[0] if words else None
    except (OSError, ValueError):
        return None
    return None
