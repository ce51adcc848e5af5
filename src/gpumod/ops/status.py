"""Live GPU status of a host, with GPU processes matched to known services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpumod.errors import RemoteCommandError
from gpumod.hosts import gpus as gpuinfo
from gpumod.ops import hosts as hostops
from gpumod.store import services as services_table
from gpumod.store.db import Store


@dataclass
class HostStatus:
    host: str
    gpus: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "gpus": self.gpus, "processes": self.processes}


def host_status(store: Store, pod: str | None) -> HostStatus:
    host = hostops.resolve_host(store, pod)
    snap = gpuinfo.snapshot(hostops.transport_for(host))
    status = HostStatus(host.name)
    if snap is not None:  # what nvidia-smi lists now is the inventory from here on
        from gpumod.ops.inventory import read

        read(store, host, usage=snap.gpus)
    if snap is None:
        if host.gpus and not host.is_local:
            raise RemoteCommandError(f"pod {host.name}: nvidia-smi is not available any more",
                                     returncode=127, hint="is the driver loaded on the pod?")
        return status
    by_pid = {s.pid: s.name for s in services_table.list_all(store, host.name)
              if s.pid is not None}
    index_of = {u.gpu.uuid: u.gpu.index for u in snap.gpus}
    for usage in snap.gpus:
        status.gpus.append({
            "index": usage.gpu.index, "uuid": usage.gpu.uuid, "name": usage.gpu.name,
            "memory_total_mib": usage.gpu.memory_mib, "memory_used_mib": usage.used_mib,
            "memory_free_mib": usage.free_mib, "driver": usage.driver,
        })
    for proc in snap.processes:
        status.processes.append({
            "gpu": index_of.get(proc.gpu_uuid), "gpu_uuid": proc.gpu_uuid, "pid": proc.pid,
            "name": proc.name, "used_mib": proc.used_mib, "service": by_pid.get(proc.pid),
        })
    return status


def render_visual(status: HostStatus) -> str:
    """One bar per GPU with a segment per process/service (the planner's picture)."""
    from gpumod.planner.picture import render_live_status

    return render_live_status(status.to_json())


def gpu_bars(status: dict[str, Any]) -> list[Any]:
    """The bars of a HostStatus JSON, for front ends that draw them themselves (the TUI)."""
    from gpumod.planner.picture import live_bars

    return live_bars(status)


def bar_cells(bar: Any, width: int) -> list[int]:
    """Columns each segment of `bar` takes in a `width`-column bar."""
    from gpumod.planner.picture import segment_cells

    return segment_cells(bar.segments, max(1, bar.total_mib), width)
