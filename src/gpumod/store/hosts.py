"""The ``hosts`` and ``gpus`` tables: hosts with their recorded GPUs, and their row mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpumod.hosts.model import GPU, Host
from gpumod.store.db import Store, dumps, loads


def _gpu(row: Any) -> GPU:
    return GPU(row["idx"], row["uuid"], row["name"], int(row["memory_mib"]))


def _host(row: Any, gpus: Sequence[GPU]) -> Host:
    return Host(
        name=row["name"], kind=row["kind"], ssh_command=row["ssh_command"],
        ssh_argv=tuple(loads(row["ssh_argv"], [])), address=row["address"],
        port_map=loads(row["port_map"], {}), root=row["root"],
        models_path=row["models_path"], mount_command=row["mount_command"],
        vllm_channel=row["vllm_channel"], engine_env=loads(row["engine_env"], {}),
        capabilities=loads(row["capabilities"], {}), gpus=tuple(gpus),
    )


def gpus(store: Store, host: str) -> list[GPU]:
    """The GPUs recorded for HOST, by index."""
    return [_gpu(r) for r in store.query("SELECT * FROM gpus WHERE host = ? ORDER BY idx",
                                         (host,))]


def get(store: Store, name: str) -> Host | None:
    row = store.query_one("SELECT * FROM hosts WHERE name = ?", (name,))
    return None if row is None else _host(row, gpus(store, name))


def exists(store: Store, name: str) -> bool:
    return store.query_one("SELECT 1 FROM hosts WHERE name = ?", (name,)) is not None


def list_all(store: Store) -> list[Host]:
    """Every host: local first, then the pods by name."""
    by_host: dict[str, list[GPU]] = {}
    for r in store.query("SELECT * FROM gpus ORDER BY host, idx"):
        by_host.setdefault(r["host"], []).append(_gpu(r))
    return [_host(row, by_host.get(row["name"], []))
            for row in store.query("SELECT * FROM hosts ORDER BY kind = 'ssh', name")]


def _values(host: Host) -> tuple[Any, ...]:
    return (host.kind, host.ssh_command, dumps(list(host.ssh_argv)), host.address,
            dumps(host.port_map), host.root, host.models_path, host.mount_command,
            host.vllm_channel, dumps(host.engine_env), dumps(host.capabilities))


def write(store: Store, host: Host) -> None:
    """Insert HOST, or update it when it exists; its GPUs replace the recorded ones."""
    with store.transaction() as db:
        if exists(store, host.name):
            db.execute(
                "UPDATE hosts SET kind=?, ssh_command=?, ssh_argv=?, address=?, port_map=?, "
                "root=?, models_path=?, mount_command=?, vllm_channel=?, engine_env=?, "
                "capabilities=?, updated_at=datetime('now') WHERE name=?",
                (*_values(host), host.name))
        else:
            db.execute(
                "INSERT INTO hosts (kind, ssh_command, ssh_argv, address, port_map, root, "
                "models_path, mount_command, vllm_channel, engine_env, capabilities, name) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (*_values(host), host.name))
        replace_gpus(store, host.name, host.gpus, touch=False)


def replace_gpus(store: Store, host: str, new: Sequence[GPU], *, touch: bool = True) -> None:
    """Record NEW as HOST's GPUs (what nvidia-smi lists there now)."""
    with store.transaction() as db:
        db.execute("DELETE FROM gpus WHERE host = ?", (host,))
        db.executemany("INSERT INTO gpus (host, idx, uuid, name, memory_mib) VALUES (?,?,?,?,?)",
                       [(host, g.index, g.uuid, g.name, g.memory_mib) for g in new])
        if touch:
            db.execute("UPDATE hosts SET updated_at=datetime('now') WHERE name = ?", (host,))


def update_facts(store: Store, name: str, *, capabilities: dict[str, Any],
                 engine_env: dict[str, Any], root: str) -> None:
    """What `gpumod init` found on a host: capabilities, engine environment, gpumod's folder."""
    with store.transaction() as db:
        db.execute("UPDATE hosts SET capabilities=?, engine_env=?, root=?, "
                   "updated_at=datetime('now') WHERE name=?",
                   (dumps(capabilities), dumps(engine_env), root, name))


def set_port_map(store: Store, name: str, port_map: dict[str, str],
                 address: str | None) -> None:
    """The host's port map; ADDRESS (when given) replaces the recorded address."""
    with store.transaction() as db:
        db.execute("UPDATE hosts SET port_map = ?, address = COALESCE(?, address), "
                   "updated_at=datetime('now') WHERE name = ?", (dumps(port_map), address, name))


def delete(store: Store, name: str) -> None:
    """Forget a host; its GPUs, services, modes and state go with it (ON DELETE CASCADE)."""
    with store.transaction() as db:
        db.execute("DELETE FROM hosts WHERE name = ?", (name,))
