"""Rows in the store as `gpumod init`, `gpumod service add` and `gpumod mode create` would
have written them (nothing runs)."""

from __future__ import annotations

from typing import Any

from gpumod.spec import ServiceSpec
from gpumod.store import modes as modes_table
from gpumod.store import services as services_table
from tests.support.gpus import H100


def register_gpu(store: Any, index: int = 0, memory_mib: int = H100[1], name: str = H100[0],
                 host: str = "local", uuid: str | None = None) -> None:
    """A GPU in the host's inventory (what `gpumod init` records)."""
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO gpus (host, idx, uuid, name, memory_mib) "
                   "VALUES (?,?,?,?,?)",
                   (host, index, uuid or f"GPU-test-{index}", name, memory_mib))


def define_service(store: Any, spec: ServiceSpec) -> ServiceSpec:
    """A service definition as `gpumod service add` stores it (nothing runs)."""
    services_table.insert(store, spec)
    return spec


def define_mode(store: Any, name: str, services: list[str], host: str = "local") -> None:
    """A mode with its services in start order."""
    modes_table.insert(store, name, host=host, description="", services=services,
                       sleep_on_idle=())
