"""The ``services`` table: service records (definitions and deployments) and their row mapping.

Column names come from :func:`_values`, never from input. Callers that need several
statements to be one decision (check then insert, check then move) wrap them in
``store.transaction()``; the functions here join it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gpumod.spec import ServiceSpec
from gpumod.store.db import Store, dumps, loads

#: a value for set_state() that leaves the column as it is
KEEP: Any = object()


def _spec(row: Any) -> ServiceSpec:
    return ServiceSpec(
        name=row["name"], host=row["host"], engine=row["engine"], model=row["model"],
        port=row["port"], gpus=tuple(loads(row["gpus"], [])),
        args=tuple(loads(row["args"], [])), env=loads(row["env"], {}),
        supervisor=row["supervisor"], sleep_mode=row["sleep_mode"],
        health_path=row["health_path"], depends_on=tuple(loads(row["depends_on"], [])),
        vram_mib=row["vram_mib"], extra=loads(row["spec"], {}), state=row["state"],
        pid=row["pid"], reserved_mib=row["reserved_mib"], note=row["note"],
    )


def _values(spec: ServiceSpec) -> dict[str, Any]:
    """Column values for INSERT/UPDATE (JSON columns sorted, so equal specs store equal)."""
    return {
        "name": spec.name, "host": spec.host, "engine": spec.engine, "model": spec.model,
        "port": spec.port, "gpus": dumps(list(spec.gpus)), "args": dumps(list(spec.args)),
        "env": dumps(spec.env), "supervisor": spec.supervisor, "sleep_mode": spec.sleep_mode,
        "health_path": spec.health_path, "depends_on": dumps(list(spec.depends_on)),
        "vram_mib": spec.vram_mib, "spec": dumps(spec.extra), "state": spec.state,
        "pid": spec.pid, "reserved_mib": spec.reserved_mib, "note": spec.note,
    }


def get(store: Store, name: str) -> ServiceSpec | None:
    row = store.query_one("SELECT * FROM services WHERE name = ?", (name,))
    return None if row is None else _spec(row)


def names(store: Store) -> list[str]:
    return [r["name"] for r in store.query("SELECT name FROM services ORDER BY name")]


def list_all(store: Store, host: str | None = None) -> list[ServiceSpec]:
    """Every service (by host, then port), or those of HOST (by port)."""
    if host is None:
        rows = store.query("SELECT * FROM services ORDER BY host, port")
    else:
        rows = store.query("SELECT * FROM services WHERE host = ? ORDER BY port", (host,))
    return [_spec(r) for r in rows]


def reserving(store: Store, state: str) -> list[ServiceSpec]:
    """Every record in STATE that holds a memory reservation (on any host: a multi-node
    record reserves on each pod it spans)."""
    rows = store.query("SELECT * FROM services WHERE state = ? AND reserved_mib > 0 "
                       "ORDER BY name", (state,))
    return [_spec(r) for r in rows]


def count_on_host(store: Store, host: str) -> int:
    return len(store.query("SELECT 1 FROM services WHERE host = ?", (host,)))


def insert(store: Store, spec: ServiceSpec) -> None:
    values = _values(spec)
    with store.transaction() as db:
        db.execute(f"INSERT INTO services ({', '.join(values)}) "  # noqa: S608 - fixed columns
                   f"VALUES ({', '.join('?' for _ in values)})", tuple(values.values()))


def replace(store: Store, spec: ServiceSpec) -> None:
    """Every column of the record named spec.name, as SPEC says."""
    values = _values(spec)
    with store.transaction() as db:
        db.execute(f"UPDATE services SET {', '.join(f'{k} = ?' for k in values)}, "  # noqa: S608
                   "updated_at = datetime('now') WHERE name = ?", (*values.values(), spec.name))


def change_extra(store: Store, name: str,
                 change: Callable[[str, dict[str, Any]], None]) -> bool:
    """Edit the record's extra data (its ``spec`` column) as one decision: CHANGE gets the
    recorded state and the data, edits the data in place, and may raise to leave the record
    as it was. False when there is no record named NAME."""
    with store.transaction() as db:
        row = db.execute("SELECT state, spec FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            return False
        extra = loads(row["spec"], {})
        change(str(row["state"]), extra)
        db.execute("UPDATE services SET spec = ?, updated_at = datetime('now') WHERE name = ?",
                   (dumps(extra), name))
    return True


def set_args(store: Store, name: str, args: Sequence[str]) -> None:
    with store.transaction() as db:
        db.execute("UPDATE services SET args = ?, updated_at = datetime('now') WHERE name = ?",
                   (dumps(list(args)), name))


def set_gpus(store: Store, name: str, gpus: Sequence[int]) -> None:
    with store.transaction() as db:
        db.execute("UPDATE services SET gpus = ?, updated_at = datetime('now') WHERE name = ?",
                   (dumps(list(gpus)), name))


def state(store: Store, name: str) -> str | None:
    """The recorded state, or None when there is no such record."""
    row = store.query_one("SELECT state FROM services WHERE name = ?", (name,))
    return None if row is None else str(row["state"])


def set_state(store: Store, name: str, state: str, *, note: str = "", pid: Any = KEEP,
              reserved_mib: Any = KEEP) -> None:
    sets, values = ["state = ?", "note = ?"], [state, note]
    if pid is not KEEP:
        sets.append("pid = ?")
        values.append(pid)
    if reserved_mib is not KEEP:
        sets.append("reserved_mib = ?")
        values.append(reserved_mib)
    with store.transaction() as db:
        db.execute(f"UPDATE services SET {', '.join(sets)}, "  # noqa: S608 - fixed columns
                   "updated_at = datetime('now') WHERE name = ?", (*values, name))


def set_pid(store: Store, name: str, pid: int | None) -> None:
    with store.transaction() as db:
        db.execute("UPDATE services SET pid = ?, updated_at = datetime('now') WHERE name = ?",
                   (pid, name))


def set_reserved(store: Store, name: str, mib: int | None) -> None:
    with store.transaction() as db:
        db.execute("UPDATE services SET reserved_mib = ? WHERE name = ?", (mib, name))


def delete(store: Store, name: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM services WHERE name = ?", (name,))
