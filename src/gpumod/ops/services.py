"""Service records in the store: read, reserve (port + GPUs in one transaction), finish, drop.

Every new record, a `pi start` deployment or a `gpumod service add`
definition, is inserted by :func:`reserve` inside one BEGIN IMMEDIATE
transaction that also checks the name, picks (or checks) the port and the
GPUs and checks the dependencies, so two commands at the same moment
serialise on SQLite's write lock and can never take the same port or GPUs.
A `pi start` reservation is state 'starting' from the moment it is inserted: the
record exists before anything runs on the host. Its moves from there (running,
stopping, removed) are the lifecycle's (gpumod.ops.machine). A definition is
state 'stopped'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gpumod import validate
from gpumod.errors import CapacityError, ConflictError, NotFoundError, UsageError
from gpumod.hosts.model import Host
from gpumod.spec import ServiceSpec
from gpumod.store import services as table
from gpumod.store.db import Store

FIRST_PORT = 8001
LAST_PORT = 8999
ORIGIN_START = "pi start"
RESERVED = frozenset({"gateway"})


def get_service(store: Store, name: str) -> ServiceSpec:
    spec = table.get(store, name)
    if spec is None:
        names = table.names(store)
        hint = f"known: {', '.join(names)}" if names else "nothing is deployed; see `pi start`"
        raise NotFoundError(f"unknown service {name!r}", hint=hint)
    return spec


def list_services(store: Store, host: str | None = None) -> list[ServiceSpec]:
    return table.list_all(store, host)


def is_deployment(spec: ServiceSpec) -> bool:
    """A record made by `pi start` (forgotten when stopped), not a `gpumod service` definition."""
    return spec.extra.get("origin") == ORIGIN_START or "started_at" in spec.extra


def is_multinode(spec: ServiceSpec) -> bool:
    """One model across pods (gpumod.ops.multinode): vLLM on this host, Ray on every pod."""
    return isinstance(spec.extra.get("multinode"), dict)


def pick_gpus(host: Host, count: int, used: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """The `count` least used GPUs of the host (free ones first, lowest index on ties)."""
    if count == 0:
        return ()
    indexes = [g.index for g in host.gpus]
    if count > len(indexes):
        have = f"{len(indexes)} GPU(s)" if indexes else "no GPU"
        raise CapacityError(f"{count} GPU(s) requested but {host.name} has {have}",
                            hint="lower the parallel sizes (tp x pp x dp), or use a bigger pod")
    load = dict.fromkeys(indexes, 0)
    for gpus in used:
        for g in gpus:
            if g in load:
                load[g] += 1
    ranked = sorted(indexes, key=lambda g: (load[g], g))
    return tuple(sorted(ranked[:count]))


def reserve(store: Store, spec: ServiceSpec, host: Host, *, listening: set[int],
            port: int | None = None, gpu_count: int | None = None,
            state: str = "starting", name_hint: str | None = None) -> ServiceSpec:
    """Insert `spec` (as `state`) with its port and GPUs chosen in the same transaction.

    port: that port (refused when a service of the host or another program holds it), or
    None for the first free one from 8001. gpu_count: pick that many of the least used
    GPUs, or None to keep spec.gpus. Dependencies must exist on the same host.
    """
    validate.name(spec.name, "service name")
    if spec.name in RESERVED:
        raise UsageError(f"the name {spec.name!r} is reserved (the gateway's own unit and "
                         "folder use it)", hint="pick another name")
    with store.transaction():
        same = table.get(store, spec.name)
        if same is not None:
            raise ConflictError(f"a service named {spec.name!r} already exists (on {same.host})",
                                hint=name_hint or f"pick another --name, or `pi stop {spec.name}` "
                                                  "first")
        neighbours = table.list_all(store, host.name)
        taken = {s.port: s.name for s in neighbours}
        if port is not None:
            validate.port(port)
            if port in taken:
                raise ConflictError(f"port {port} on {host.name} is already used by "
                                    f"{taken[port]}", hint="leave --port out to get a free one")
            if port in listening:
                raise ConflictError(f"port {port} on {host.name} is taken by another program",
                                    hint="leave --port out to get a free one")
            chosen = port
        else:
            chosen = next((p for p in range(FIRST_PORT, LAST_PORT + 1)
                           if p not in taken and p not in listening), 0)
            if not chosen:
                raise CapacityError(f"no free port between {FIRST_PORT} and {LAST_PORT} "
                                    f"on {host.name}")
        for dep in spec.depends_on:
            found = table.get(store, dep)
            if found is None:
                raise NotFoundError(f"dependency {dep!r} is not a service", hint="add it first")
            if found.host != host.name:
                raise UsageError(f"dependency {dep!r} runs on {found.host}, not {host.name}")
        gpus = spec.gpus if gpu_count is None else \
            pick_gpus(host, gpu_count, (s.gpus for s in neighbours))
        reserved = spec.with_(host=host.name, port=chosen, gpus=gpus, state=state, pid=None)
        table.insert(store, reserved)
    return reserved


def save_args(store: Store, name: str, args: Sequence[str]) -> None:
    table.set_args(store, name, args)


def save_gpus(store: Store, name: str, gpus: Sequence[int]) -> None:
    table.set_gpus(store, name, gpus)


def drop(store: Store, name: str) -> None:
    table.delete(store, name)
