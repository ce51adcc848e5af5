"""Simulation: would these services (a mode, plus or minus some) fit on the host's GPUs?

Services and modes come from the store (tables ``services``, ``modes``,
``mode_services``); GPUs from the ``gpus`` table, or (``live=True``) from the
host's nvidia-smi right now. Each service becomes a placement request: its
engine args give the context, utilization and cache types; its model gives the
facts (cached in ``model_facts``).

Live usage: memory held by processes *outside* the simulated set (other
programs, services that leave the mode) counts as occupied; memory held by a
service that *is* in the set (its recorded pid and that pid's process tree) is
not counted twice, since the plan already places the whole service. When the
host cannot be reached or has no nvidia-smi, the stored inventory is used and
the result says so (``usage`` = ``"inventory"`` with a ``usage_note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import GpumodError, NotFoundError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.planner import estimate as est
from gpumod.planner import facts as facts_mod
from gpumod.planner.gputable import display_name
from gpumod.planner.picture import GPUBar, Segment
from gpumod.planner.placement import GPUState, Neighbour, Placement, ServiceRequest, place
from gpumod.spec import ServiceSpec


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


def placement_bars(placement: Placement, requests: list[ServiceRequest] = (),
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
                # Keep the cause's type (and exit code): offline stays a transport error.
                exc.message = f"{spec.name}: cannot size {spec.model}: {exc.message}"
                exc.hint = exc.hint or "set the service's vram budget"
                raise
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


def _process_trees(transport: Transport, roots: dict[str, int]) -> tuple[dict[int, str], str]:
    """pid -> service for every process in each service's tree (one `ps` for all).

    Falls back to the recorded pids alone when `ps` fails; the second value says so.
    """
    owner = {pid: name for name, pid in roots.items()}
    if not roots:
        return owner, ""
    from gpumod.hosts.processes import PS_ARGV

    try:
        result = transport.run(PS_ARGV, timeout=20)
    except GpumodError as exc:
        return owner, f"process trees unknown ({exc.message}); matched by pid only"
    if not result.ok:
        return owner, "process trees unknown (`ps` failed); matched by pid only"
    children: dict[int, list[int]] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    for name, root in roots.items():
        stack = [root]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in owner:
                    owner[child] = name
                    stack.append(child)
    return owner, ""


def live_usage(store: Any, host: str, names: list[str], transport: Transport, *,
               timeout: float = 20) -> LiveUsage | None:
    """The host's GPUs as nvidia-smi sees them now, minus what the simulated set holds.

    None when the host has no nvidia-smi; transport and nvidia-smi failures raise.
    """
    from gpumod.hosts.gpus import snapshot

    snap = snapshot(transport, timeout=timeout)
    if snap is None:
        return None
    rows = store.query("SELECT name, pid, sleep_mode, gpus FROM services "
                       "WHERE host = ? AND pid IS NOT NULL AND pid > 0", (host,))
    roots = {r["name"]: int(r["pid"]) for r in rows}
    sleep_modes = {r["name"]: r["sleep_mode"] for r in rows}
    owner, tree_note = _process_trees(transport, roots) if snap.processes else ({}, "")
    index_of = {u.gpu.uuid: u.gpu.index for u in snap.gpus}
    in_set = set(names)
    warnings = [tree_note] if tree_note else []
    mine: dict[int, int] = {u.gpu.index: 0 for u in snap.gpus}
    held: dict[int, dict[tuple[str, int | None], list[int]]] = {i: {} for i in mine}
    unknown_mine: set[str] = set()
    for proc in snap.processes:
        idx = index_of.get(proc.gpu_uuid)
        if idx is None:
            continue
        service = owner.get(proc.pid)
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


def host_gpus(store: Any, host: str, snapshot: Any = None) -> list[GPUState]:
    if snapshot is not None:
        from gpumod.planner.placement import gpu_states

        return gpu_states(snapshot.gpus)
    rows = store.query("SELECT * FROM gpus WHERE host = ? ORDER BY idx", (host,))
    return [GPUState(r["idx"], r["name"], int(r["memory_mib"]), 0) for r in rows]


def simulate(store: Any, *, host: str, services: list[str] | None = None,
             mode: str | None = None, add: list[str] = (), remove: list[str] = (),
             contexts: dict[str, int] | None = None, gpus: list[GPUState] | None = None,
             hub: facts_mod.HubClient | None = None, margin_mib: int | None = None,
             live: bool = False, transport: Transport | None = None) -> Simulation:
    """Place the chosen services on the host's GPUs (in start order) and report the fit.

    With ``live``, the GPUs and what other processes hold on them come from the host's
    nvidia-smi (through ``transport``, else the host's own); when that fails the stored
    inventory is used and ``Simulation.usage_note`` says why.
    """
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
    usage, note, occupants, neighbours = "inventory", "", {}, []
    gpu_list = gpus
    if gpu_list is None and live:
        observed, note = _observe(store, host, names, transport)
        if observed is not None:
            usage, gpu_list = "live", observed.gpus
            occupants, neighbours = observed.occupants, observed.neighbours
            warnings += observed.warnings
    if gpu_list is None:
        gpu_list = host_gpus(store, host)
    kwargs: dict[str, Any] = {} if margin_mib is None else {"margin_mib": margin_mib}
    placement = place(gpu_list, requests, neighbours=neighbours, **kwargs)
    return Simulation(host, names, placement, requests, warnings, usage, note, occupants)


def _observe(store: Any, host: str, names: list[str],
             transport: Transport | None) -> tuple[LiveUsage | None, str]:
    """Live usage, or None and the one-line reason the inventory is used instead."""
    try:
        if transport is None:
            from gpumod.ops.hosts import get_host, transport_for

            transport = transport_for(get_host(store, host))
        observed = live_usage(store, host, names, transport)
    except GpumodError as exc:
        return None, f"live usage unavailable: {exc.message}"
    if observed is None:
        return None, f"no nvidia-smi on {host}"
    if not observed.gpus:
        return None, f"nvidia-smi on {host} lists no GPU"
    return observed, ""
