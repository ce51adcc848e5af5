"""Host registry: read, resolve (--pod / active), save, remove; transports for hosts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gpumod import paths, validate
from gpumod.errors import ConflictError, NotFoundError, UsageError
from gpumod.hosts.model import GPU, Host
from gpumod.store.db import Store, dumps

if TYPE_CHECKING:  # the transports (subprocess, ssh) load when a host is reached, not listed
    from gpumod.hosts.transports.base import Transport

LOCAL = "local"


def get_host(store: Store, name: str) -> Host:
    row = store.query_one("SELECT * FROM hosts WHERE name = ?", (name,))
    if row is None:
        known = ", ".join(h.name for h in list_hosts(store))
        raise NotFoundError(f"unknown pod {name!r}",
                            hint=f"known: {known}; add one with `pi pods setup NAME \"ssh ...\"`")
    gpus = [GPU(r["idx"], r["uuid"], r["name"], r["memory_mib"])
            for r in store.query("SELECT * FROM gpus WHERE host = ? ORDER BY idx", (name,))]
    return Host.from_row(row, gpus)


def list_hosts(store: Store) -> list[Host]:
    rows = store.query("SELECT * FROM hosts ORDER BY kind = 'ssh', name")
    gpus: dict[str, list[GPU]] = {}
    for r in store.query("SELECT * FROM gpus ORDER BY host, idx"):
        gpus.setdefault(r["host"], []).append(GPU(r["idx"], r["uuid"], r["name"], r["memory_mib"]))
    return [Host.from_row(row, gpus.get(row["name"], [])) for row in rows]


def active_host_name(store: Store) -> str:
    name = store.get_setting("active_host", LOCAL) or LOCAL
    if store.query_one("SELECT 1 FROM hosts WHERE name = ?", (name,)) is None:
        return LOCAL
    return name


def resolve_host(store: Store, pod: str | None) -> Host:
    """The host a command targets: --pod NAME, else the active pod, else local."""
    return get_host(store, pod if pod else active_host_name(store))


def set_active(store: Store, name: str) -> Host:
    host = get_host(store, name)
    store.set_setting("active_host", host.name)
    return host


def save_host(store: Store, host: Host, *, replace: bool) -> None:
    """Insert or update a pod with its GPUs in one transaction."""
    validate.name(host.name, "pod name")
    with store.transaction() as db:
        exists = db.execute("SELECT 1 FROM hosts WHERE name = ?", (host.name,)).fetchone()
        if exists and not replace:
            raise ConflictError(f"pod {host.name!r} already exists",
                                hint="pick another name, or re-run setup for it")
        values = (host.kind, host.ssh_command, dumps(list(host.ssh_argv)), host.address,
                  dumps(host.port_map), host.root, host.models_path, host.mount_command,
                  host.vllm_channel, dumps(host.engine_env), dumps(host.capabilities))
        if exists:
            db.execute(
                "UPDATE hosts SET kind=?, ssh_command=?, ssh_argv=?, address=?, port_map=?, "
                "root=?, models_path=?, mount_command=?, vllm_channel=?, engine_env=?, "
                "capabilities=?, updated_at=datetime('now') WHERE name=?",
                (*values, host.name))
        else:
            db.execute(
                "INSERT INTO hosts (kind, ssh_command, ssh_argv, address, port_map, root, "
                "models_path, mount_command, vllm_channel, engine_env, capabilities, name) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (*values, host.name))
        db.execute("DELETE FROM gpus WHERE host = ?", (host.name,))
        db.executemany(
            "INSERT INTO gpus (host, idx, uuid, name, memory_mib) VALUES (?,?,?,?,?)",
            [(host.name, g.index, g.uuid, g.name, g.memory_mib) for g in host.gpus])


def update_local(store: Store, gpus: list[GPU], capabilities: dict, engine_env: dict) -> Host:
    with store.transaction() as db:
        db.execute("UPDATE hosts SET capabilities=?, engine_env=?, root=?, "
                   "updated_at=datetime('now') WHERE name='local'",
                   (dumps(capabilities), dumps(engine_env), str(paths.home())))
        db.execute("DELETE FROM gpus WHERE host = 'local'")
        db.executemany("INSERT INTO gpus (host, idx, uuid, name, memory_mib) VALUES (?,?,?,?,?)",
                       [(LOCAL, g.index, g.uuid, g.name, g.memory_mib) for g in gpus])
    return get_host(store, LOCAL)


def remove_host(store: Store, name: str) -> tuple[Host, int]:
    """Forget a pod and its local records. Returns the host and how many services it had."""
    if name == LOCAL:
        raise UsageError("the local host cannot be removed")
    host = get_host(store, name)
    with store.transaction() as db:
        count = db.execute("SELECT COUNT(*) FROM services WHERE host = ?", (name,)).fetchone()[0]
        db.execute("DELETE FROM hosts WHERE name = ?", (name,))
        if (store.get_setting("active_host") or LOCAL) == name:
            db.execute("UPDATE settings SET value = 'local' WHERE key = 'active_host'")
    return host, int(count)


def set_port_map(store: Store, name: str, port_map: dict[str, str],
                 address: str | None) -> Host:
    host = get_host(store, name)
    with store.transaction() as db:
        db.execute("UPDATE hosts SET port_map = ?, address = COALESCE(?, address), "
                   "updated_at=datetime('now') WHERE name = ?",
                   (json.dumps(port_map, sort_keys=True), address, host.name))
    return get_host(store, name)


def transport_for(host: Host) -> Transport:
    """The transport that reaches a host (one SSH master per pod, shared)."""
    if host.is_local:
        from gpumod.hosts.transports.local import LocalTransport

        return LocalTransport()
    from gpumod.hosts.transports.ssh import SSHTransport

    return SSHTransport(host.ssh_target(), label=f"pod {host.name}")


def host_root(host: Host) -> str:
    """gpumod's folder on the host: services, logs, env files live under it."""
    if host.is_local:
        return str(paths.home())
    if not host.root:
        raise UsageError(f"pod {host.name!r} has no recorded folder",
                         hint=f"re-run `pi pods setup {host.name} ...`")
    return host.root
