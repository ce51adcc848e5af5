"""Host and GPU records (the store maps them to rows: gpumod.store.hosts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpumod.hosts.sshcmd import SSHTarget


@dataclass(frozen=True)
class GPU:
    index: int
    uuid: str
    name: str
    memory_mib: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_mib": self.memory_mib}


@dataclass(frozen=True)
class Host:
    name: str
    kind: str  # "local" | "ssh"
    ssh_command: str | None = None
    ssh_argv: tuple[str, ...] = ()
    address: str | None = None
    port_map: dict[str, str] = field(default_factory=dict)
    root: str | None = None
    models_path: str | None = None
    mount_command: str | None = None
    vllm_channel: str | None = None
    engine_env: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)
    gpus: tuple[GPU, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def ssh_target(self) -> SSHTarget:
        from gpumod.hosts.sshcmd import parse_ssh_command

        return parse_ssh_command(self.ssh_command or "")

    def gpu_summary(self) -> str:
        if not self.gpus:
            return "no GPU"
        names: dict[str, int] = {}
        for gpu in self.gpus:
            label = f"{gpu.name} {round(gpu.memory_mib / 1024)}GB"
            names[label] = names.get(label, 0) + 1
        return ", ".join(f"{n}x {label}" for label, n in names.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "ssh": self.ssh_command,
            "address": self.address, "port_map": self.port_map, "root": self.root,
            "models_path": self.models_path, "vllm": self.vllm_channel,
            "engine_env": self.engine_env, "capabilities": self.capabilities,
            "gpus": [g.to_json() for g in self.gpus],
        }
