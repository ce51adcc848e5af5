"""`gpumod simulate`: read services, modes and GPUs, observe the host, let the planner place.

The planner (``gpumod.planner.simulate``) plans from data; this module gathers it:
the services and modes from the store, the model facts and calibrations
(through ``gpumod.ops.sizing``, the same requests `pi start` admits with), and,
with ``live``, the host's nvidia-smi and process trees. When the host cannot be
reached or has no nvidia-smi, the stored inventory is used and the result says
so (``usage`` = ``"inventory"`` with a ``usage_note``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpumod.errors import GpumodError, NotFoundError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.ops import sizing
from gpumod.planner import estimate as est
from gpumod.spec import ServiceSpec
from gpumod.store import hosts as hosts_table
from gpumod.store import modes as modes_table
from gpumod.store import services as services_table
from gpumod.store.db import Store


def simulate(store: Store, *, host: str, services: list[str] | None = None,
             mode: str | None = None, add: Sequence[str] = (), remove: Sequence[str] = (),
             contexts: dict[str, int] | None = None, gpus: list[Any] | None = None,
             hub: Any = None, margin_mib: int | None = None, live: bool = False,
             transport: Transport | None = None, version: str | None = None,
             leaving: Sequence[str] = (), strict: bool = True) -> Any:
    """Place the chosen services on the host's GPUs (in start order) and report the fit.

    With ``live``, the GPUs and what other processes hold on them come from the host's
    nvidia-smi (through ``transport``, else the host's own); when that fails the stored
    inventory is used and ``Simulation.usage_note`` says why. ``version`` overrides the
    vLLM version recorded for the host. ``leaving`` services are about to stop: what they
    hold counts as free. Not ``strict``: a service with neither model facts nor a
    declared budget counts as 0 (with a warning) instead of failing the simulation.
    """
    from gpumod.ops.hosts import get_host
    from gpumod.planner import simulate as plan

    contexts = dict(contexts or {})
    if services and mode:
        raise UsageError("give --services or --mode, not both")
    listed: list[str] = []
    if mode:
        mode_host, listed = mode_services(store, mode)
        host = host or mode_host
    elif services:
        listed = list(services)
    names = plan.choose_services(listed, add=add, remove=remove, contexts=contexts)
    specs = service_specs(store, names)
    host_rec = _host_or_none(store, host, get_host)
    requests, warnings = [], []
    for spec in specs:
        req, warn = _request(store, spec, host_rec, contexts.get(spec.name), hub, version,
                             strict)
        requests.append(req)
        warnings += warn
    usage, note, occupants, neighbours = "inventory", "", {}, []
    gpu_list = gpus
    if gpu_list is None and live:
        observed, note = _observe(store, host, names, transport, list(leaving))
        if observed is not None:
            usage, gpu_list = "live", observed.gpus
            occupants, neighbours = observed.occupants, observed.neighbours
            warnings += observed.warnings
    if gpu_list is None:
        gpu_list = host_gpus(store, host)
    return plan.simulate_requests(host, names, requests, gpu_list, usage=usage, usage_note=note,
                                  occupants=occupants, neighbours=neighbours,
                                  warnings=warnings, margin_mib=margin_mib)


def picture(result: Any) -> str:
    """The ASCII VRAM picture of a simulation (`gpumod simulate --visual`)."""
    from gpumod.planner.picture import render_gpu_bars

    return render_gpu_bars(result.bars())


def _host_or_none(store: Store, name: str, get_host: Any) -> Any:
    try:
        return get_host(store, name)
    except NotFoundError:
        return None


def _request(store: Store, spec: ServiceSpec, host: Any, context: int | None, hub: Any,
             version: str | None, strict: bool = True) -> tuple[Any, list[str]]:
    """The service's request; without facts, its declared budget (else the cause's error)."""
    warnings: list[str] = []
    facts = None
    if spec.engine in sizing.ENGINES:
        try:
            facts = sizing.service_facts(store, spec, hub=hub)
        except GpumodError as exc:
            share = (est.parse_vllm_args(list(spec.args)).gpu_memory_utilization
                     if spec.engine == "vllm" else None)
            if spec.vram_mib:
                warnings.append(f"{spec.name}: no facts for {spec.model} ({exc.message}); "
                                f"using its declared {spec.vram_mib} MiB")
            elif share:
                warnings.append(f"{spec.name}: no facts for {spec.model} ({exc.message}); "
                                f"sized by its --gpu-memory-utilization {share}")
            elif not strict:
                warnings.append(f"{spec.name}: no facts for {spec.model} ({exc.message}) and "
                                "no declared VRAM budget: counted as 0")
            else:
                # Keep the cause's type (and exit code): offline stays a transport error.
                exc.message = f"{spec.name}: cannot size {spec.model}: {exc.message}"
                exc.hint = exc.hint or "set the service's vram budget"
                raise
    req = sizing.service_request(store, spec, host=host, facts=facts, context=context,
                                 version=version)
    return req, warnings


def service_specs(store: Any, names: list[str]) -> list[ServiceSpec]:
    specs = []
    for name in names:
        spec = services_table.get(store, name)
        if spec is None:
            known = services_table.names(store)
            raise NotFoundError(f"unknown service {name!r}",
                                hint=("known: " + ", ".join(known)) if known else
                                "define one with `gpumod service add`")
        specs.append(spec)
    return specs


def mode_services(store: Any, mode: str) -> tuple[str, list[str]]:
    found = modes_table.get(store, mode)
    if found is None:
        known = modes_table.names(store)
        raise NotFoundError(f"unknown mode {mode!r}",
                            hint=("known: " + ", ".join(known)) if known else
                            "define one with `gpumod mode create`")
    return found.host, list(found.services)


def host_gpus(store: Store, host: str) -> list[Any]:
    """The host's GPUs as the inventory recorded them (nothing in use)."""
    from gpumod.planner.placement import GPUState

    return [GPUState(g.index, g.name, g.memory_mib, 0) for g in hosts_table.gpus(store, host)]


def live_usage(store: Store, host: str, names: list[str], transport: Transport, *,
               timeout: float = 20, leaving: Sequence[str] = ()) -> Any:
    """The host's GPUs as nvidia-smi sees them now, minus what the simulated set holds.

    None when the host has no nvidia-smi; transport and nvidia-smi failures raise.
    """
    from gpumod.hosts.gpus import snapshot
    from gpumod.hosts.processes import owners
    from gpumod.planner.simulate import live_usage as plan_usage

    snap = snapshot(transport, timeout=timeout)
    if snap is None:
        return None
    running = [s for s in services_table.list_all(store, host) if s.pid and s.pid > 0]
    roots = {s.name: int(s.pid or 0) for s in running}
    sleep_modes = {s.name: s.sleep_mode for s in running}
    owner, tree_note = owners(transport, roots) if snap.processes else ({}, "")
    return plan_usage(snap, names, owner, sleep_modes, tree_note, leaving=leaving)


def _observe(store: Any, host: str, names: list[str], transport: Transport | None,
             leaving: Sequence[str] = ()) -> tuple[Any, str]:
    """Live usage, or None and the one-line reason the inventory is used instead."""
    try:
        if transport is None:
            from gpumod.ops.hosts import get_host, transport_for

            transport = transport_for(get_host(store, host))
        observed = live_usage(store, host, names, transport, leaving=leaving)
    except GpumodError as exc:
        return None, f"live usage unavailable: {exc.message}"
    if observed is None:
        return None, f"no nvidia-smi on {host}"
    if not observed.gpus:
        return None, f"nvidia-smi on {host} lists no GPU"
    return observed, ""
