"""A mode's live health: `gpumod mode status` and `gpumod mode verify` (one round trip)."""

from __future__ import annotations

from typing import Any

from gpumod.errors import GpumodError
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import lifecycle
from gpumod.ops.modes import Mode, current_mode, get_mode
from gpumod.store.db import Store


def _live(store: Store, mode: Mode, transport: Any = None) -> dict[str, Any]:
    """{service: ServiceStatus or GpumodError} for a mode's services (one round trip)."""
    from gpumod.ops.states import host_status

    found: dict[str, Any] = {}
    specs = []
    for service in mode.services:
        try:
            specs.append(lifecycle.get_service(store, service))
        except GpumodError as exc:
            found[service] = exc
    if specs:
        host = hosts_ops.get_host(store, mode.host)
        for status in host_status(store, host, specs, transport=transport):
            found[status.spec.name] = status
    return found


def mode_status(store: Store, host: str, *, transport: Any = None) -> dict[str, Any]:
    name = current_mode(store, host)
    out: dict[str, Any] = {"host": host, "current_mode": name, "services": []}
    if not name:
        return out
    live = _live(store, get_mode(store, name), transport)
    for service in get_mode(store, name).services:
        status = live[service]
        if isinstance(status, GpumodError):
            out["services"].append({"name": service, "state": "unknown",
                                    "error": status.message})
            continue
        out["services"].append({"name": service, "state": status.state,
                                "recorded_state": status.spec.state,
                                "process": status.process, "health": status.health,
                                "sleeping": status.sleeping})
    return out


def verify_mode(store: Store, name: str, *, transport: Any = None) -> dict[str, Any]:
    """Is every service of the mode running and healthy? Lists those that are not.

    A service the mode lets sleep when idle (sleep_on_idle) may be asleep.
    """
    mode = get_mode(store, name)
    live = _live(store, mode, transport)
    services, problems = [], []
    for service in mode.services:
        status = live[service]
        row: dict[str, Any]
        if isinstance(status, GpumodError):
            row = {"name": service, "state": "unknown", "process": "unknown",
                   "health": f"unknown ({status.message})", "sleeping": None, "detail": ""}
        else:
            row = {"name": service, "state": status.state, "process": status.process,
                   "health": status.health, "sleeping": status.sleeping,
                   "detail": status.detail}
        row["ok"] = row["state"] == "running" or (
            row["state"] == "sleeping" and service in mode.sleep_on_idle)
        services.append(row)
        if not row["ok"]:
            problems.append(f"{service}: process {row['process']}, health {row['health']}"
                            + (f" ({row['state']}: {row['detail']})" if row["detail"] else ""))
    return {"mode": name, "host": mode.host, "current": current_mode(store, mode.host) == name,
            "healthy": not problems, "services": services, "problems": problems}
