"""Host registry: read, resolve (--pod / active), save, remove; transports for hosts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpumod import paths, validate
from gpumod.errors import ConflictError, NotFoundError, UsageError
from gpumod.hosts.model import GPU, Host
from gpumod.store import hosts as hosts_table
from gpumod.store import services as services_table
from gpumod.store.db import Store

if TYPE_CHECKING:  # the transports (subprocess, ssh) load when a host is reached, not listed
    from gpumod.hosts.transports.base import Transport

LOCAL = "local"


def get_host(store: Store, name: str) -> Host:
    host = hosts_table.get(store, name)
    if host is None:
        known = ", ".join(h.name for h in list_hosts(store))
        raise NotFoundError(f"unknown pod {name!r}",
                            hint=f"known: {known}; add one with `pi pods setup NAME \"ssh ...\"`")
    return host


def list_hosts(store: Store) -> list[Host]:
    return hosts_table.list_all(store)


def active_host_name(store: Store) -> str:
    name = store.get_setting("active_host", LOCAL) or LOCAL
    return name if hosts_table.exists(store, name) else LOCAL


def resolve_host(store: Store, pod: str | None) -> Host:
    """The host a command targets: --pod NAME, else the active pod, else local."""
    if pod is not None and not pod.strip():  # `--pod "$POD"` with POD unset: not the active
        raise UsageError("--pod is empty",
                         hint="name a pod (`pi pods` lists them), 'local', or leave --pod out "
                              "for the active one")
    return get_host(store, pod if pod else active_host_name(store))


def set_active(store: Store, name: str) -> Host:
    host = get_host(store, name)
    store.set_setting("active_host", host.name)
    return host


def save_host(store: Store, host: Host, *, replace: bool) -> None:
    """Insert or update a pod with its GPUs in one transaction."""
    validate.name(host.name, "pod name")
    with store.transaction():
        if hosts_table.exists(store, host.name) and not replace:
            raise ConflictError(f"pod {host.name!r} already exists",
                                hint="pick another name, or re-run setup for it")
        hosts_table.write(store, host)


def update_local(store: Store, gpus: list[GPU], capabilities: dict, engine_env: dict) -> Host:
    with store.transaction():
        hosts_table.update_facts(store, LOCAL, capabilities=capabilities,
                                 engine_env=engine_env, root=str(paths.home()))
        hosts_table.replace_gpus(store, LOCAL, gpus, touch=False)
    return get_host(store, LOCAL)


def save_gpus(store: Store, name: str, gpus: Sequence[GPU]) -> None:
    """Replace a host's recorded GPUs (what nvidia-smi lists there now)."""
    hosts_table.replace_gpus(store, name, gpus)


def remove_host(store: Store, name: str) -> tuple[Host, int]:
    """Forget a pod and its local records. Returns the host and how many services it had."""
    if name == LOCAL:
        raise UsageError("the local host cannot be removed")
    host = get_host(store, name)
    with store.transaction():
        count = services_table.count_on_host(store, name)
        hosts_table.delete(store, name)
        if (store.get_setting("active_host") or LOCAL) == name:
            store.set_setting("active_host", LOCAL)
    return host, count


def set_port_map(store: Store, name: str, port_map: dict[str, str],
                 address: str | None) -> Host:
    host = get_host(store, name)
    hosts_table.set_port_map(store, host.name, port_map, address)
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
