"""The GPUs a host really has, read where services are placed; GPUs for a GPU engine.

The store's GPU rows are a cache of the last reading. `gpumod init` and
`pi pods setup` fill them, but nothing depends on having run those: every
command that places a service (service add/start, mode switch, `pi start`,
simulate, plan, the MCP server, the TUI, the watch loop) reads the host's
nvidia-smi through :func:`read` (or hands it the figures it already read),
and a reading that differs from the store (count, card, total memory)
replaces it. Without nvidia-smi, or when it fails, the stored rows are kept:
only a positive reading changes them.

:func:`ensure_gpus` is the rule at launch: a GPU engine (vLLM, llama.cpp) on
a host that has GPUs never runs with none. A service without GPUs gets them
from the planner (the model's estimate placed on the live figures; without
facts, the GPUs with the most free memory), or the start fails with one line
and a hint. A host with no GPU at all may run llama.cpp on the CPU, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpumod.errors import CapacityError, GpumodError, RemoteCommandError
from gpumod.hosts.gpus import GPUUsage, snapshot
from gpumod.hosts.model import GPU, Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.store.db import Store

log = logging.getLogger(__name__)

#: engines that run on GPUs when the host has them (CUDA_VISIBLE_DEVICES pins them)
GPU_ENGINES = frozenset({"vllm", "llamacpp"})
#: engines that cannot run at all without a GPU
GPU_ONLY_ENGINES = frozenset({"vllm"})
UNSET: Any = object()


@dataclass(frozen=True)
class Reading:
    """A host as read now: its GPUs, nvidia-smi's live figures (None: not read), why not."""

    host: Host
    usage: list[GPUUsage] | None
    changed: bool = False
    note: str = ""


def _identity(gpus: Sequence[GPU]) -> list[tuple[int, str, str, int]]:
    return sorted((g.index, g.uuid, g.name, g.memory_mib) for g in gpus)


def read(store: Store, host: Host, *, transport: Transport | None = None,
         usage: Sequence[GPUUsage] | None = UNSET) -> Reading:
    """The host's GPUs from its nvidia-smi now; the store updated when they changed.

    usage: nvidia-smi figures the caller already read (None: it found no nvidia-smi),
    so no second round trip is made. An unreachable host or a failing nvidia-smi keeps
    the stored GPUs (the reading's note says why).
    """
    if usage is UNSET:
        try:
            snap = snapshot(transport or hosts_ops.transport_for(host))
        except GpumodError as exc:
            return Reading(host, None, note=f"GPUs not read: {exc.message}")
        if snap is None:
            return Reading(host, None, note=f"no nvidia-smi on {host.name}")
        usage = snap.gpus
    if usage is None:
        return Reading(host, None, note=f"no nvidia-smi on {host.name}")
    live = tuple(sorted((u.gpu for u in usage), key=lambda g: g.index))
    if _identity(live) == _identity(host.gpus):
        return Reading(host, list(usage))
    hosts_ops.save_gpus(store, host.name, live)
    store.log_event("gpus", host=host.name,
                    detail=f"{len(host.gpus)} -> {len(live)} GPU(s): "
                           + (", ".join(f"{g.index}: {g.name} {g.memory_mib} MiB" for g in live)
                              or "none"))
    return Reading(replace(host, gpus=live), list(usage), changed=True)


def refresh(store: Store, host: Host, *, transport: Transport | None = None) -> Host:
    """The host with the GPUs it has now (see :func:`read`)."""
    return read(store, host, transport=transport).host


def free_mib(host: Host, *, transport: Transport | None = None
             ) -> dict[int, tuple[int, int]] | None:
    """{GPU index: (free MiB, total MiB)} from the host's nvidia-smi now; None without one,
    or when it is there but fails (no live figures: the caller's admission decides)."""
    try:
        snap = snapshot(transport or hosts_ops.transport_for(host))
    except RemoteCommandError:
        return None
    if snap is None:
        return None
    out = {}
    for u in snap.gpus:
        total = int(u.gpu.memory_mib)
        free = u.free_mib if u.free_mib is not None else total - int(u.used_mib or 0)
        out[u.gpu.index] = (int(free), total)
    return out


def target_host(store: Store, pod: str | None = None, *, mode: str | None = None,
                stored_if_known: bool = False) -> Host:
    """The host a placing command targets (--pod, else a mode's host, else the active
    one), with its GPUs read now. stored_if_known: keep recorded GPUs without reading
    (`simulate --no-live`); a host with none recorded is read all the same."""
    if mode and not pod:
        from gpumod.ops.simulate import mode_services

        name, _ = mode_services(store, mode)
        host = hosts_ops.get_host(store, name)
    else:
        host = hosts_ops.resolve_host(store, pod)
    if stored_if_known and host.gpus:
        return host
    return refresh(store, host)


# ---------------------------------------------------------------------------- choosing GPUs


def gpu_count(spec: ServiceSpec) -> int:
    """How many GPUs the service's engine asks for (0 for engines that need none)."""
    if spec.engine not in GPU_ENGINES:
        return 0
    from gpumod.engines.registry import get_engine

    return get_engine(spec.engine).gpu_count(spec.args)


def _planner_choice(store: Store, spec: ServiceSpec, host: Host,
                    usage: Sequence[GPUUsage], count: int) -> tuple[int, ...] | None:
    """The planner's GPUs for spec on the live figures; None when it cannot size it."""
    from gpumod.ops.sizing import service_facts, service_request
    from gpumod.planner.placement import gpu_states, place

    try:
        unpinned = spec.with_(gpus=())
        facts = service_facts(store, unpinned, host)
        request = service_request(store, unpinned, host=host, facts=facts)
        placement = place(gpu_states(list(usage)), [request], with_alternatives=False)
    except GpumodError:  # no facts (offline, gated, unknown model): the spread-out choice
        return None
    except Exception as exc:  # a planner bug must not block a start: say what broke
        log.warning("the planner could not place %s (%s: %s); GPUs chosen by free memory",
                    spec.name, type(exc).__name__, exc)
        store.log_event("gpu-choice-failed", host=host.name, service=spec.name,
                        detail=f"{type(exc).__name__}: {exc}")
        return None
    chosen = placement.assignments[0].gpus if placement.assignments else ()
    if not placement.fits or len(chosen) != count:
        return None
    return tuple(sorted(chosen))


def choose_gpus(store: Store, spec: ServiceSpec, host: Host,
                usage: Sequence[GPUUsage] | None, *, count: int | None = None
                ) -> tuple[int, ...]:
    """`count` GPUs of the host for spec: the planner's placement when it can size the
    model, else the GPUs with the most free memory now (fewest services on ties)."""
    count = gpu_count(spec) if count is None else count
    if count == 0:
        return ()
    if count > len(host.gpus):
        have = f"{len(host.gpus)} GPU(s)" if host.gpus else "no GPU"
        raise CapacityError(f"{spec.name} needs {count} GPU(s) but {host.name} has {have}",
                            hint="lower the parallel sizes (tp x pp x dp), or use a host with "
                                 "more GPUs (--pod NAME)")
    if usage:
        chosen = _planner_choice(store, spec, host, usage, count)
        if chosen:
            return chosen
    free = {u.gpu.index: (u.free_mib if u.free_mib is not None else u.gpu.memory_mib)
            for u in usage or ()}
    load = {g.index: 0 for g in host.gpus}
    for other in services_table.list_all(store, host.name):
        if other.name == spec.name:
            continue
        for index in other.gpus:
            if index in load:
                load[index] += 1
    ranked = sorted(load, key=lambda i: (-free.get(i, 0), load[i], i))
    return tuple(sorted(ranked[:count]))


def ensure_gpus(store: Store, spec: ServiceSpec, host: Host,
                usage: Sequence[GPUUsage] | None = UNSET, *,
                transport: Transport | None = None,
                progress: Callable[[str], None] = lambda _m: None
                ) -> tuple[ServiceSpec, Host]:
    """Before a launch: the host's GPUs as read now, and GPUs for a GPU engine without any.

    usage: nvidia-smi's figures the caller already read (None: no nvidia-smi; unset:
    read them now). Returns the service (its record updated when GPUs were chosen) and
    the host.
    """
    reading = read(store, host, transport=transport, usage=usage)
    host, usage = reading.host, reading.usage
    if spec.engine not in GPU_ENGINES or spec.gpus:
        return spec, host
    if not host.gpus:
        if spec.engine in GPU_ONLY_ENGINES:
            raise CapacityError(f"{spec.engine} needs a GPU and {host.name} has none "
                                "(nvidia-smi lists no GPU there)",
                                hint="start it on a GPU pod (--pod NAME), or use llama.cpp "
                                     "with a GGUF model on the CPU")
        progress(f"{spec.name}: {host.name} has no GPU: {spec.engine} runs on the CPU")
        return spec, host
    if spec.extra.get("cpu") and spec.engine not in GPU_ONLY_ENGINES:
        progress(f"{spec.name}: runs on the CPU, as asked (no GPU of {host.name})")
        return spec, host
    chosen = choose_gpus(store, spec, host, usage)
    from gpumod.ops import services as records

    records.save_gpus(store, spec.name, chosen)
    progress(f"{spec.name}: no GPU recorded; placed on GPU {','.join(map(str, chosen))} "
             f"of {host.name}")
    return spec.with_(gpus=chosen), host
