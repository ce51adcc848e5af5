"""ServiceSpec: one named deployment (Pi's "model", gpumod's "service").

This is the shape every layer shares: the store keeps it in `services`,
engines turn it into argv and env, supervisors run it, the planner sizes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ENGINES = ("vllm", "llamacpp", "command", "docker")
SLEEP_MODES = ("none", "l1", "l2", "router")
SUPERVISORS = ("process", "systemd", "docker")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    host: str
    engine: str
    model: str
    port: int
    gpus: tuple[int, ...] = ()
    args: tuple[str, ...] = ()           # engine args (after the engine's own fixed argv)
    env: dict[str, str] = field(default_factory=dict)  # non-secret environment
    supervisor: str = "process"
    sleep_mode: str = "none"
    health_path: str = "/health"
    depends_on: tuple[str, ...] = ()
    vram_mib: int | None = None          # planned budget per GPU
    extra: dict[str, Any] = field(default_factory=dict)  # engine specific (docker image, ...)
    state: str = "defined"
    pid: int | None = None
    reserved_mib: int | None = None      # admitted for a start, not yet held (per GPU)
    note: str = ""                       # why it is in its recorded state

    def with_(self, **changes: Any) -> ServiceSpec:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "host": self.host, "engine": self.engine, "model": self.model,
            "port": self.port, "gpus": list(self.gpus), "args": list(self.args),
            "env": dict(self.env), "supervisor": self.supervisor, "sleep_mode": self.sleep_mode,
            "health_path": self.health_path, "depends_on": list(self.depends_on),
            "vram_mib": self.vram_mib, "extra": dict(self.extra), "state": self.state,
            "pid": self.pid, "reserved_mib": self.reserved_mib, "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceSpec:
        return cls(
            name=data["name"], host=data["host"], engine=data["engine"], model=data["model"],
            port=int(data["port"]), gpus=tuple(data.get("gpus") or ()),
            args=tuple(data.get("args") or ()), env=dict(data.get("env") or {}),
            supervisor=data.get("supervisor", "process"),
            sleep_mode=data.get("sleep_mode", "none"),
            health_path=data.get("health_path", "/health"),
            depends_on=tuple(data.get("depends_on") or ()), vram_mib=data.get("vram_mib"),
            extra=dict(data.get("extra") or {}), state=data.get("state", "defined"),
            pid=data.get("pid"), reserved_mib=data.get("reserved_mib"),
            note=str(data.get("note") or ""),
        )
