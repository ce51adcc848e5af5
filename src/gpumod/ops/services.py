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

import json
from collections.abc import Iterable, Sequence

from gpumod import validate
from gpumod.errors import CapacityError, ConflictError, NotFoundError, UsageError
from gpumod.hosts.model import Host
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

FIRST_PORT = 8001
LAST_PORT = 8999
ORIGIN_START = "pi start"
RESERVED = frozenset({"gateway"})


def get_service(store: Store, name: str) -> ServiceSpec:
    row = store.query_one("SELECT * FROM services WHERE name = ?", (name,))
    if row is None:
        names = [r["name"] for r in store.query("SELECT name FROM services ORDER BY name")]
        hint = f"known: {', '.join(names)}" if names else "nothing is deployed; see `pi start`"
        raise NotFoundError(f"unknown service {name!r}", hint=hint)
    return ServiceSpec.from_row(row)


def list_services(store: Store, host: str | None = None) -> list[ServiceSpec]:
    if host is None:
        rows = store.query("SELECT * FROM services ORDER BY host, port")
    else:
        rows = store.query("SELECT * FROM services WHERE host = ? ORDER BY port", (host,))
    return [ServiceSpec.from_row(r) for r in rows]


def is_deployment(spec: ServiceSpec) -> bool:
    """A record made by `pi start` (forgotten when stopped), not a `gpumod service` definition."""
    return spec.extra.get("origin") == ORIGIN_START or "started_at" in spec.extra


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
    with store.transaction() as db:
        row = db.execute("SELECT host FROM services WHERE name = ?", (spec.name,)).fetchone()
        if row:
            raise ConflictError(f"a service named {spec.name!r} already exists (on {row['host']})",
                                hint=name_hint or f"pick another --name, or `pi stop {spec.name}` "
                                                  "first")
        rows = db.execute("SELECT name, port, gpus FROM services WHERE host = ?",
                          (host.name,)).fetchall()
        taken = {r["port"]: r["name"] for r in rows}
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
            found = db.execute("SELECT host FROM services WHERE name = ?", (dep,)).fetchone()
            if found is None:
                raise NotFoundError(f"dependency {dep!r} is not a service", hint="add it first")
            if found["host"] != host.name:
                raise UsageError(f"dependency {dep!r} runs on {found['host']}, not {host.name}")
        gpus = spec.gpus if gpu_count is None else \
            pick_gpus(host, gpu_count, (json.loads(r["gpus"]) for r in rows))
        reserved = spec.with_(host=host.name, port=chosen, gpus=gpus, state=state, pid=None)
        values = reserved.row_values()
        # Column names come from ServiceSpec.row_values(), never from input.
        db.execute(f"INSERT INTO services ({', '.join(values)}) "  # noqa: S608
                   f"VALUES ({', '.join('?' for _ in values)})", tuple(values.values()))
    return reserved


def save_args(store: Store, name: str, args: Sequence[str]) -> None:
    with store.transaction() as db:
        db.execute("UPDATE services SET args = ?, updated_at = datetime('now') WHERE name = ?",
                   (json.dumps(list(args)), name))


def drop(store: Store, name: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM services WHERE name = ?", (name,))
