"""Simulation: would these services (a mode, plus or minus some) fit on the host's GPUs?

Services and modes come from the store (tables ``services``, ``modes``,
``mode_services``); GPUs from the ``gpus`` table, or a live nvidia-smi
snapshot when the caller passes one. Each service becomes a placement
request: its engine args give the context, utilization and cache types;
its model gives the facts (cached in ``model_facts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import GpumodError, NotFoundError, UsageError
from gpumod.planner import estimate as est
from gpumod.planner import facts as facts_mod
from gpumod.planner.gputable import display_name
from gpumod.planner.picture import GPUBar, Segment
from gpumod.planner.placement import GPUState, Placement, ServiceRequest, place
from gpumod.spec import ServiceSpec


@dataclass
class Simulation:
    host: str
    services: list[str]
    placement: Placement
    requests: list[ServiceRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        p = self.placement
        return {
            "host": self.host, "services": self.services, "fits": p.fits, "reason": p.reason,
            "gpus": [{"index": g.index, "name": g.name, "total_mib": g.total_mib,
                      "usable_mib": g.capacity_mib, "used_mib": g.used_mib,
                      "planned_mib": g.planned_mib, "free_after_mib": g.free_after_mib,
                      "margin_mib": g.margin_mib, "fits": g.fits,
                      "over_by_mib": max(0, g.margin_mib - g.free_after_mib),
                      "services": [{"name": n, "mib": m} for n, m in g.services]}
                     for g in p.gpus],
            "assignments": [{"service": a.service, "engine": a.engine, "gpus": list(a.gpus),
                             "per_gpu_mib": a.per_gpu_mib, "settings": a.settings,
                             "engine_args": a.engine_args, "notes": a.notes}
                            for a in p.assignments],
            "alternatives": [{"rank": a.rank, "kind": a.kind, "description": a.description,
                              "saves_mib": a.saves_mib, "changes": a.changes}
                             for a in p.alternatives],
            "warnings": self.warnings,
        }

    def bars(self) -> list[GPUBar]:
        return placement_bars(self.placement, self.requests)


def placement_bars(placement: Placement, requests: list[ServiceRequest] = ()) -> list[GPUBar]:
    """GPUBar rows for render_gpu_bars from a placement."""
    by_name = {r.name: r for r in requests}
    bars = []
    for g in placement.gpus:
        segments = []
        if g.used_mib:
            segments.append(Segment("(other processes)", g.used_mib))
        for name, mib in g.services:
            a = placement.assignment(name)
            detail = []
            if a and a.settings.get("max_model_len"):
                detail.append(f"{a.settings['max_model_len'] // 1024}K ctx")
            if a and a.settings.get("ctx"):
                detail.append(f"-c {a.settings['ctx']}")
            if a and a.settings.get("gpu_memory_utilization"):
                detail.append(f"util {a.settings['gpu_memory_utilization']:.2f}")
            req = by_name.get(name)
            if req and req.sleep_mode not in ("none", ""):
                detail.append(f"sleep {req.sleep_mode}")
            if a and "does not fit" in a.notes:
                detail.append("DOES NOT FIT")
            segments.append(Segment(name, mib, ", ".join(detail)))
        bars.append(GPUBar(g.index, display_name(g.name, g.total_mib), g.total_mib, segments))
    return bars


def service_specs(store: Any, names: list[str]) -> list[ServiceSpec]:
    specs = []
    for name in names:
        row = store.query_one("SELECT * FROM services WHERE name = ?", (name,))
        if row is None:
            known = [r["name"] for r in store.query("SELECT name FROM services ORDER BY name")]
            raise NotFoundError(f"unknown service {name!r}",
                                hint=("known: " + ", ".join(known)) if known else
                                "define one with `gpumod service add`")
        specs.append(ServiceSpec.from_row(row))
    return specs


def mode_services(store: Any, mode: str) -> tuple[str, list[str]]:
    row = store.query_one("SELECT * FROM modes WHERE name = ?", (mode,))
    if row is None:
        known = [r["name"] for r in store.query("SELECT name FROM modes ORDER BY name")]
        raise NotFoundError(f"unknown mode {mode!r}",
                            hint=("known: " + ", ".join(known)) if known else
                            "define one with `gpumod mode create`")
    names = [r["service"] for r in store.query(
        "SELECT service FROM mode_services WHERE mode = ? ORDER BY position, service", (mode,))]
    return row["host"], names


def request_for(spec: ServiceSpec, *, store: Any = None, context: int | None = None,
                facts: facts_mod.ModelFacts | None = None,
                hub: facts_mod.HubClient | None = None) -> tuple[ServiceRequest, list[str]]:
    """A placement request from a service definition (and its model's facts)."""
    warnings: list[str] = []
    if facts is None and spec.engine in ("vllm", "llamacpp"):
        try:
            facts = facts_mod.resolve(spec.model, store=store, hub=hub)
        except GpumodError as exc:
            if spec.vram_mib:
                warnings.append(f"{spec.name}: no facts for {spec.model} ({exc.message}); "
                                f"using its declared {spec.vram_mib} MiB")
            else:
                raise UsageError(f"{spec.name}: cannot size {spec.model}: {exc.message}",
                                 hint=exc.hint or "set the service's vram budget") from exc
    req = ServiceRequest(name=spec.name, engine=spec.engine if facts else "command",
                         facts=facts, pinned_gpus=tuple(spec.gpus), vram_mib=spec.vram_mib,
                         sleep_mode=spec.sleep_mode,
                         version=str(spec.extra.get("engine_version") or "") or None)
    if facts and spec.engine == "vllm":
        a = est.parse_vllm_args(spec.args)
        req.tp = a.tp if a.tp > 1 else max(1, len(spec.gpus) or 1)
        req.context = context or a.max_model_len
        req.gpu_memory_utilization = a.gpu_memory_utilization
        req.kv_cache_memory_bytes = a.kv_cache_memory_bytes
        req.kv_cache_dtype = a.kv_cache_dtype
        req.max_num_seqs = a.max_num_seqs
        req.enforce_eager = a.enforce_eager
    elif facts and spec.engine == "llamacpp":
        a2 = est.parse_llamacpp_args(spec.args)
        req.context = context or a2.ctx
        req.n_gpu_layers = a2.n_gpu_layers
        req.cache_type_k, req.cache_type_v = a2.cache_type_k, a2.cache_type_v
        req.parallel = a2.parallel
    return req, warnings


def host_gpus(store: Any, host: str, snapshot: Any = None) -> list[GPUState]:
    if snapshot is not None:
        from gpumod.planner.placement import gpu_states

        return gpu_states(snapshot.gpus)
    rows = store.query("SELECT * FROM gpus WHERE host = ? ORDER BY idx", (host,))
    return [GPUState(r["idx"], r["name"], int(r["memory_mib"]), 0) for r in rows]


def simulate(store: Any, *, host: str, services: list[str] | None = None,
             mode: str | None = None, add: list[str] = (), remove: list[str] = (),
             contexts: dict[str, int] | None = None, gpus: list[GPUState] | None = None,
             hub: facts_mod.HubClient | None = None, margin_mib: int | None = None
             ) -> Simulation:
    """Place the chosen services on the host's GPUs (in start order) and report the fit."""
    contexts = dict(contexts or {})
    if services and mode:
        raise UsageError("give --services or --mode, not both")
    names: list[str] = []
    if mode:
        mode_host, names = mode_services(store, mode)
        host = host or mode_host
    elif services:
        names = list(services)
    elif not add:
        raise UsageError("nothing to simulate", hint="use --services a,b or --mode NAME")
    for name in add:
        if name not in names:
            names.append(name)
    for name in remove:
        if name not in names:
            raise UsageError(f"--remove {name}: not part of the simulated set",
                             hint="in the set: " + (", ".join(names) or "nothing"))
        names.remove(name)
    unknown_ctx = [k for k in contexts if k not in names]
    if unknown_ctx:
        raise UsageError(f"--context {unknown_ctx[0]}=...: no such service in the set")
    specs = service_specs(store, names)
    requests: list[ServiceRequest] = []
    warnings: list[str] = []
    for spec in specs:
        req, warn = request_for(spec, store=store, context=contexts.get(spec.name), hub=hub)
        requests.append(req)
        warnings += warn
    gpu_list = gpus if gpus is not None else host_gpus(store, host)
    kwargs = {} if margin_mib is None else {"margin_mib": margin_mib}
    placement = place(gpu_list, requests, **kwargs)
    return Simulation(host, names, placement, requests, warnings)
