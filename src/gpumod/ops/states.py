"""The real state of services, checked on their hosts: one classification for every front end.

`pi list`, `gpumod service list/status`, `gpumod mode status/verify`, the MCP
tools and the TUI all show the states of :func:`classify`:

- running      the process is alive and its health check answers, from the service's
               own process group (the port's owner is checked, as the start does)
- starting     alive, recorded as starting or its health says "loading"; or a start
               in progress (another gpumod command holds the service)
- sleeping     recorded as asleep and the process is alive (a sleeping vLLM still
               answers /health, so the record tells)
- stopping     a stop in progress, or one that could not be confirmed while the
               process still runs (`pi stop NAME` finishes it)
- unhealthy    alive, but the health check fails, or another program answers on its port
- degraded     a multi-node deployment one of whose Ray nodes is not running
- crashed      supposed to run (or its last start failed or was interrupted), no process
- stopped      defined but not running, never started, or stopped outside gpumod
- unreachable  the host could not be reached (its records are kept)
- unknown      the host answered nothing usable for this service

One round trip per host (:func:`host_status`), hosts in parallel threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpumod.errors import GpumodError, TransportError, UsageError
from gpumod.hosts.model import Host
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import services as records
from gpumod.ops.endpoints import endpoint_url
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

if TYPE_CHECKING:  # loaded by host_status, when there is a service to ask about
    from gpumod.engines.base import Engine
    from gpumod.hosts.transports.base import Transport
    from gpumod.ops import probe as probes

STATES = ("running", "starting", "sleeping", "stopping", "unhealthy", "degraded", "crashed",
          "stopped", "unreachable", "unknown")
# recorded states of a service gpumod did not start, or stopped itself
NOT_STARTED = ("defined", "stopped")
# the host-side process word -> the supervisor's word (shown as "process")
PROCESS_WORDS = {"alive": "running", "dead": "crashed", "gone": "crashed",
                 "stopped": "stopped", "missing": "stopped", "unknown": "unknown"}


@dataclass
class ServiceStatus:
    spec: ServiceSpec
    state: str
    detail: str
    url: str
    http: int = 0
    process: str = "unknown"   # running | stopped | crashed | unknown
    health: str = "unknown"    # ok | loading (...) | failing (...) | - | unknown
    nodes: list[dict[str, Any]] = field(default_factory=list)  # multi-node: each pod's Ray

    @property
    def sleeping(self) -> bool:
        return self.state == "sleeping"

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {"name": s.name, "model": s.model, "engine": s.engine, "pod": s.host,
                "host": s.host, "port": s.port, "gpus": list(s.gpus), "url": self.url,
                "state": self.state, "detail": self.detail, "process": self.process,
                "health": self.health, "sleeping": self.sleeping, "pid": s.pid,
                "recorded_state": s.state, "supervisor": s.supervisor,
                "sleep_mode": s.sleep_mode, "args": list(s.args),
                "depends_on": list(s.depends_on), "note": s.note,
                "served_model": s.extra.get("served_model", s.model),
                "aliases": list(s.extra.get("aliases") or ()),  # --alias: gateway names
                "idle_ttl": s.extra.get("idle_ttl"),  # --idle-ttl seconds; -1 never; None
                **({"nodes": self.nodes} if self.nodes else {})}


def classify(spec: ServiceSpec, probe: probes.Probe | None, engine: Engine | None,
             holder: str | None = None) -> tuple[str, str]:
    """(state, detail) of a service from its record and what its host said.

    holder: the gpumod command changing the service right now, if any.
    """
    if probe is None or probe.process == "unknown":
        return "unknown", "the host sent no answer for this service"
    ok = engine.health.ok_codes if engine else (200,)
    loading = engine.health.loading_codes if engine else ()
    alive = probe.process == "alive"
    if spec.state == "stopping":
        if holder:
            return "stopping", f"being stopped ({holder})"
        why = spec.note or "a stop was not confirmed"
        if alive:
            return "stopping", f"pid {probe.pid} still runs: {why}; `pi stop {spec.name}` " \
                               "finishes the stop"
        return "stopped", f"{why}; the process is gone: `pi stop {spec.name}` (or `pi list " \
                          "--prune` for a deployment) forgets it"
    if alive:
        if spec.state == "sleeping":
            return "sleeping", f"pid {probe.pid}, asleep ({spec.sleep_mode})"
        if probe.http in ok and probe.owner is False:
            return "unhealthy", (f"pid {probe.pid} alive, but another program answers on "
                                 f"port {spec.port}")
        if probe.http in ok:
            return "running", f"pid {probe.pid}, health {probe.http}"
        if spec.state == "starting" or probe.http in loading:
            return "starting", f"pid {probe.pid}, health {probe.http or 'no answer'}"
        return "unhealthy", f"pid {probe.pid} alive, health {probe.http or 'no answer'}"
    if spec.state == "starting":
        if holder:
            return "starting", f"being started ({holder})"
        return "crashed", "its start was interrupted and no process runs"
    if spec.state in NOT_STARTED:
        return "stopped", "never started" if spec.state == "defined" else "stopped"
    if probe.process == "stopped":
        return "stopped", "stopped outside gpumod"
    if spec.state == "failed":
        return "crashed", spec.note or "its last start failed (see its log)"
    if probe.process == "missing":
        return "crashed", "service folder missing on the host"
    return "crashed", f"process {probe.pid or ''} is gone".replace("  ", " ")


def _health(probe: probes.Probe | None, engine: Engine | None, port: int) -> str:
    if probe is None or probe.process == "unknown":
        return "unknown"
    if probe.process != "alive":
        return "-"
    if probe.http in (engine.health.ok_codes if engine else (200,)):
        if probe.owner is False:
            return f"failing (another program answers on port {port})"
        return "ok"
    answer = f"HTTP {probe.http}" if probe.http else "no answer"
    if engine and probe.http in engine.health.loading_codes:
        return f"loading ({answer})"
    return f"failing ({answer})"


def _probe_item(spec: ServiceSpec, host: Host, transport: Transport, engine: Engine | None
                ) -> tuple[tuple, Any]:
    """(the host script's item, the supervisor when only it can tell the state)."""
    from gpumod.ops.addresses import bind_address, probe_address, service_dir
    from gpumod.ops.runtime import supervisor_for
    from gpumod.supervise.base import LaunchPlan

    try:
        bind = bind_address(spec, host)
    except UsageError:
        bind = ""
    folder = service_dir(host, spec.name)
    try:
        supervisor = supervisor_for(spec, host, transport)
    except UsageError:
        supervisor = None
    plan = LaunchPlan(spec.name, (), service_dir=folder)
    source = supervisor.status_source(plan) if supervisor else ("", "")
    owner = bool(supervisor and supervisor.owns_port and (engine is None or
                                                          engine.serves_port_itself))
    scope, unit = source or ("", "")
    item = (folder, spec.port, spec.health_path or "/health", probe_address(bind), scope, unit,
            owner)
    return item, (supervisor if source is None else None)


def _supervisor_probe(supervisor: Any, spec: ServiceSpec, item: tuple,
                      found: probes.Probe | None) -> probes.Probe:
    """A supervisor whose processes the host script cannot see (Docker's engine) says."""
    from gpumod.ops import probe as probes
    from gpumod.supervise.base import LaunchPlan, ProcessState

    plan = LaunchPlan(spec.name, (), service_dir=item[0])
    try:
        state = supervisor.state(plan)
        pid = supervisor.pid(plan) if state == ProcessState.RUNNING else None
    except (GpumodError, ImportError):
        state, pid = ProcessState.UNKNOWN, None
    word = {ProcessState.RUNNING: "alive", ProcessState.STOPPED: "stopped",
            ProcessState.CRASHED: "dead"}.get(state, "unknown")
    return probes.Probe(item[0], pid, word, found.http if found else 0)


def host_status(store: Store, host: Host, specs: Sequence[ServiceSpec], *,
                transport: Transport | None = None, health_timeout: float = 3
                ) -> list[ServiceStatus]:
    """One round trip for every service of a host (health_timeout: per health answer)."""
    if not specs:
        return []
    from gpumod.engines.registry import get_engine
    from gpumod.ops import probe as probes

    def url(spec: ServiceSpec) -> str:
        try:
            return str(spec.extra.get("url") or endpoint_url(host, spec.port))
        except GpumodError:
            return ""

    transport = transport or hosts_ops.transport_for(host)
    engines: list[Engine | None] = []
    for spec in specs:
        try:
            engines.append(get_engine(spec.engine))
        except UsageError:
            engines.append(None)
    items = [_probe_item(spec, host, transport, engine)
             for spec, engine in zip(specs, engines, strict=True)]
    try:
        found = probes.probe_host(transport, [item for item, _ in items],
                                  health_timeout=health_timeout)
    except TransportError as exc:
        return [ServiceStatus(s, "unreachable", exc.message, url(s)) for s in specs]
    except GpumodError as exc:
        return [ServiceStatus(s, "unknown", exc.message, url(s)) for s in specs]
    statuses = []
    for spec, engine, (item, own) in zip(specs, engines, items, strict=True):
        probe = found.get(item[0])
        if own is not None:
            probe = _supervisor_probe(own, spec, item, probe)
        holder = None
        if spec.state in ("starting", "stopping"):  # is a gpumod command changing it now?
            from gpumod.ops.locks import service_holder

            holder = service_holder(spec.name)
        state, detail = classify(spec, probe, engine, holder)
        statuses.append(ServiceStatus(
            spec, state, detail, url(spec), probe.http if probe else 0,
            PROCESS_WORDS.get(probe.process, "unknown") if probe else "unknown",
            _health(probe, engine, spec.port)))
    return statuses


def list_status(store: Store, host_names: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Real state of services: hosts in parallel, one round trip per host."""
    specs = records.list_services(store)
    hosts = {h.name: h for h in hosts_ops.list_hosts(store)}
    wanted = list(host_names) if host_names is not None else list(hosts)
    by_host: dict[str, list[ServiceSpec]] = {}
    for spec in specs:
        if spec.host in wanted and spec.host in hosts:
            by_host.setdefault(spec.host, []).append(spec)
    if not by_host:
        return []
    if len(by_host) == 1:  # the usual case (the active pod): no thread pool to start
        [(name, group)] = by_host.items()
        statuses = host_status(store, hosts[name], group)
    else:
        from concurrent.futures import ThreadPoolExecutor

        results: dict[str, list[ServiceStatus]] = {}
        with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
            futures = {name: pool.submit(host_status, store, hosts[name], group)
                       for name, group in by_host.items()}
            for name, future in futures.items():
                results[name] = future.result()
        statuses = [status for name in by_host for status in results[name]]
    _refine_multinode(store, statuses)
    return statuses


def service_status(store: Store, name: str, *, transport: Transport | None = None
                   ) -> ServiceStatus:
    """The live state of one service (one round trip to its host)."""
    spec = records.get_service(store, name)
    host = hosts_ops.get_host(store, spec.host)
    status = host_status(store, host, [spec], transport=transport)[0]
    _refine_multinode(store, [status])
    return status


def _refine_multinode(store: Store, statuses: list[ServiceStatus]) -> None:
    """Multi-node deployments: each pod's Ray node (ops.multinode loads only for one)."""
    if any(records.is_multinode(status.spec) for status in statuses):
        from gpumod.ops.multinode import refine

        refine(store, statuses)


def raise_if_unreachable(statuses: Sequence[ServiceStatus]) -> None:
    """After showing a listing: a host that could not be asked is a failure (exit 5)."""
    from gpumod.errors import TransportError

    unreachable = sorted({st.spec.host for st in statuses if st.state == "unreachable"})
    if unreachable:
        raise TransportError(f"could not reach {', '.join(unreachable)}; their records are kept",
                             hint="check the pod is up (`pi ssh NAME true`)")
