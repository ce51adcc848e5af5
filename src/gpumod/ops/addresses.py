"""Where a service listens on its host, and where gpumod's folder for it is.

One bind rule (:func:`bind_address`): vLLM's dev endpoints on (sleep enabled, or any
``VLLM_SERVER_DEV_MODE`` value vLLM reads as on) always on 127.0.0.1 (they have no
authentication); else the service's own ``bind``; else 127.0.0.1 on `local` and 0.0.0.0
on pods.
"""

from __future__ import annotations

import posixpath

from gpumod.engines.vllm import DEV_MODE_ENV, dev_mode_enabled
from gpumod.errors import UsageError
from gpumod.hosts.model import Host
from gpumod.ops import hosts as hosts_ops
from gpumod.spec import ServiceSpec

BINDS = ("127.0.0.1", "0.0.0.0", "::1", "::", "localhost")  # noqa: S104


def dev_mode(spec: ServiceSpec) -> bool:
    """vLLM's unauthenticated dev endpoints are on: sleep enabled, or the env turns them on
    (read as vLLM reads it, whatever the engine: a command or container may run vLLM)."""
    return (spec.engine == "vllm" and spec.sleep_mode in {"l1", "l2"}) \
        or dev_mode_enabled(spec.env.get(DEV_MODE_ENV))


def bind_address(spec: ServiceSpec, host: Host) -> str:
    if dev_mode(spec):
        return "127.0.0.1"  # dev endpoints have no auth
    bind = str(spec.extra.get("bind") or "")
    if bind:
        if bind not in BINDS:
            raise UsageError(f"invalid bind address {bind!r}", hint=f"use {', '.join(BINDS)}")
        return bind
    return "127.0.0.1" if host.is_local else "0.0.0.0"  # noqa: S104 - pods are reached remotely


def probe_address(bind: str) -> str:
    """Where, on the host itself, a server bound to `bind` answers."""
    if bind in ("0.0.0.0", "::", "127.0.0.1", "", "localhost"):  # noqa: S104
        return "127.0.0.1"
    return "[::1]" if bind == "::1" else bind


def service_dir(host: Host, name: str) -> str:
    return posixpath.join(hosts_ops.host_root(host), "services", name)
