"""Simulation: would these services (a mode, plus or minus some) fit on the host's GPUs?

Pure planning: service definitions and their sizing requests in, a
:class:`Simulation` out. Reading services, modes and GPUs from the store and
asking the host's nvidia-smi is the operations layer's job (``gpumod.ops.simulate``).

Live usage: memory held by processes *outside* the simulated set (other
programs, services that leave the mode) counts as occupied; memory held by a
service that *is* in the set (its recorded pid and that pid's process tree) is
not counted twice, since the plan already places the whole service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import UsageError
from gpumod.planner import estimate as est
from gpumod.planner.facts import ModelFacts
from gpumod.planner.gputable import display_name
from gpumod.planner.picture import GPUBar, Segment
from gpumod.planner.placement import GPUState, Neighbour, Placement, ServiceRequest, place


@dataclass(frozen=True)
class Occupant:
    """Memory on a GPU held by something outside the simulated set (live usage only)."""
    label: str          # a service name, "python3 (pid 123)", or "(driver, unlisted)"
    mib: int
    detail: str = ""
    service: str | None = None
    pid: int | None = None


@dataclass
class LiveUsage:
    gpus: list[GPUState]                      # used_mib = memory of processes that stay
    occupants: dict[int, list[Occupant]]      # per GPU index, summing to used_mib
    neighbours: list[Neighbour]               # running services outside the set that can sleep
    not_double_counted: dict[int, int]        # MiB the simulated services hold now, per GPU
    warnings: list[str] = field(default_factory=list)


@dataclass
class Simulation:
    host: str
    services: list[str]
    placement: Placement
    requests: list[ServiceRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    usage: str = "inventory"                  # "live" | "inventory"
    usage_note: str = ""                      # why the inventory was used, or what live saw
    occupants: dict[int, list[Occupant]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        p = self.placement
        return {
            "host": self.host, "services": self.services, "fits": p.fits, "reason": p.reason,
            "usage": self.usage, "usage_note": self.usage_note,
            "gpus": [{"index": g.index, "name": g.name, "total_mib": g.total_mib,
                      "usable_mib": g.capacity_mib, "used_mib": g.used_mib,
                      "planned_mib": g.planned_mib, "free_after_mib": g.free_after_mib,
                      "margin_mib": g.margin_mib, "fits": g.fits,
                      "over_by_mib": max(0, g.margin_mib - g.free_after_mib),
                      "services": [{"name": n, "mib": m} for n, m in g.services],
                      "occupied_by": [{"label": o.label, "mib": o.mib, "service": o.service,
                                       "pid": o.pid}
                                      for o in self.occupants.get(g.index, [])]}
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
        return placement_bars(self.placement, self.requests, self.occupants)


def placement_bars(placement: Placement, requests: Sequence[ServiceRequest] = (),
                   occupants: dict[int, list[Occupant]] | None = None) -> list[GPUBar]:
    """GPUBar rows for render_gpu_bars from a placement (live occupants drawn one by one)."""
    by_name = {r.name: r for r in requests}
    bars = []
    for g in placement.gpus:
        segments = []
        held = [o for o in (occupants or {}).get(g.index, []) if o.mib > 0]
        if held:
            segments += [Segment(o.label, o.mib, o.detail) for o in held]
        elif g.used_mib:
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


def request_from_args(name: str, engine: str, args: Sequence[str], *,
                      facts: ModelFacts | None, context: int | None = None,
                      gpus: Sequence[int] = (), vram_mib: int | None = None,
                      sleep_mode: str = "none", version: str | None = None) -> ServiceRequest:
    """A sizing request for `engine` serving `facts` with these engine args.

    Engines the planner does not model (or no facts) become a declared-budget
    request. Everything that builds requests goes through here (through
    ``gpumod.ops.sizing``), so the start check, `gpumod simulate` and `gpumod
    model estimate` read the same flags the same way.
    """
    modelled = facts is not None and engine in ("vllm", "llamacpp")
    req = ServiceRequest(name=name, engine=engine if modelled else "command", facts=facts,
                         pinned_gpus=tuple(gpus), vram_mib=vram_mib, sleep_mode=sleep_mode,
                         version=version or None, engine_args=tuple(args))
    if modelled and engine == "vllm":
        a = est.parse_vllm_args(list(args))
        req.pp = max(1, a.pp)
        width = max(1, len(gpus) or 1)
        req.tp = a.tp if a.tp > 1 else max(1, width // req.pp)
        req.context = context or a.max_model_len
        req.gpu_memory_utilization = a.gpu_memory_utilization
        req.kv_cache_memory_bytes = a.kv_cache_memory_bytes
        req.kv_cache_dtype = a.kv_cache_dtype
        req.max_num_seqs = a.max_num_seqs
        req.enforce_eager = a.enforce_eager
    elif engine == "vllm":
        # no facts: vLLM still takes exactly its --gpu-memory-utilization share of each card
        req.gpu_memory_utilization = est.parse_vllm_args(list(args)).gpu_memory_utilization
    elif modelled:
        a2 = est.parse_llamacpp_args(list(args))
        req.context = context or a2.ctx
        req.n_gpu_layers = a2.n_gpu_layers
        req.cache_type_k, req.cache_type_v = a2.cache_type_k, a2.cache_type_v
        req.parallel = a2.parallel
    return req


def choose_services(listed: Sequence[str], *, add: Sequence[str] = (),
                    remove: Sequence[str] = (), contexts: dict[str, int] | None = None
                    ) -> list[str]:
    """The simulated set: `listed` (a mode's services, or those named) plus and minus some."""
    names = list(listed)
    if not names and not add:
        raise UsageError("nothing to simulate", hint="use --services a,b or --mode NAME")
    for name in add:
        if name not in names:
            names.append(name)
    for name in remove:
        if name not in names:
            raise UsageError(f"--remove {name}: not part of the simulated set",
                             hint="in the set: " + (", ".join(names) or "nothing"))
        names.remove(name)
    unknown_ctx = [k for k in (contexts or {}) if k not in names]
    if unknown_ctx:
        raise UsageError(f"--context {unknown_ctx[0]}=...: no such service in the set")
    return names


def live_usage(snap: Any, names: Sequence[str], owner: dict[int, str],
               sleep_modes: dict[str, str], tree_note: str = "", *,
               leaving: Sequence[str] = ()) -> LiveUsage:
    """The host's GPUs as nvidia-smi saw them (`snap`), minus what the simulated set holds.

    `owner` maps every pid of a recorded service's process tree to the service;
    `sleep_modes` gives each running service's sleep mode; `leaving` services are
    about to stop, so what they hold counts as free.
    """
    index_of = {u.gpu.uuid: u.gpu.index for u in snap.gpus}
    in_set, gone = set(names), set(leaving)
    warnings = [tree_note] if tree_note else []
    mine: dict[int, int] = {u.gpu.index: 0 for u in snap.gpus}
    held: dict[int, dict[tuple[str, int | None], list[int]]] = {i: {} for i in mine}
    unknown_mine: set[str] = set()
    for proc in snap.processes:
        idx = index_of.get(proc.gpu_uuid)
        if idx is None:
            continue
        service = owner.get(proc.pid)
        if service is not None and service in gone:
            continue
        if service in in_set:
            if proc.used_mib is None:
                unknown_mine.add(service)
            else:
                mine[idx] += proc.used_mib
            continue
        key = (service or f"{proc.name or 'process'} (pid {proc.pid})",
               None if service else proc.pid)
        held[idx].setdefault(key, []).append(proc.used_mib or 0)
    for name in sorted(unknown_mine):
        warnings.append(f"{name}: nvidia-smi does not report its memory; it may be counted "
                        "twice (as running now and as planned)")
    gpus: list[GPUState] = []
    occupants: dict[int, list[Occupant]] = {}
    neighbour_mib: dict[str, tuple[set[int], int]] = {}
    for u in snap.gpus:
        total = int(u.gpu.memory_mib)
        used = u.used_mib if u.used_mib is not None else (
            total - u.free_mib if u.free_mib is not None else 0)
        staying = max(0, int(used) - mine[u.gpu.index])
        gpus.append(GPUState(u.gpu.index, u.gpu.name, total, staying))
        listed: list[Occupant] = []
        for (label, pid), parts in held[u.gpu.index].items():
            mib = sum(parts)
            service = label if pid is None else None
            detail = ("running, not in the simulated set" if service
                      else "not a gpumod service")
            listed.append(Occupant(label, mib, detail, service, pid))
            if service:
                gpus_of, most = neighbour_mib.get(service, (set(), 0))
                neighbour_mib[service] = (gpus_of | {u.gpu.index}, max(most, mib))
        listed.sort(key=lambda o: -o.mib)
        rest = staying - sum(o.mib for o in listed)
        if rest > 0:
            listed.append(Occupant("(driver, unlisted)", rest,
                                   "used per nvidia-smi, held by no listed process"))
        occupants[u.gpu.index] = listed
    neighbours = [Neighbour(name, tuple(sorted(g)), mib, sleep_modes.get(name) or "none")
                  for name, (g, mib) in neighbour_mib.items()]
    return LiveUsage(gpus, occupants, neighbours, mine, warnings)


def simulate_requests(host: str, names: list[str], requests: list[ServiceRequest],
                      gpus: list[GPUState], *, usage: str = "inventory", usage_note: str = "",
                      occupants: dict[int, list[Occupant]] | None = None,
                      neighbours: Sequence[Neighbour] = (), warnings: Sequence[str] = (),
                      margin_mib: int | None = None) -> Simulation:
    """Place the requests on the GPUs (in start order) and report the fit."""
    kwargs: dict[str, Any] = {} if margin_mib is None else {"margin_mib": margin_mib}
    placement = place(gpus, requests, neighbours=list(neighbours), **kwargs)
    return Simulation(host, list(names), placement, requests, list(warnings), usage, usage_note,
                      dict(occupants or {}))
