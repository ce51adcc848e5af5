"""What a supervisor is given, and what it must do.

A LaunchPlan is everything needed to run one service on its host: the argv,
the non-secret environment, and where the service's folder is. Secrets are
never part of the plan's argv or env: supervisors receive them separately and
write them to a 0600 env file through stdin.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum


class ProcessState(str, Enum):
    RUNNING = "running"      # process alive
    STOPPED = "stopped"      # no process, stopped on purpose or never started
    CRASHED = "crashed"      # no process, but it was supposed to run
    UNKNOWN = "unknown"      # could not tell (host unreachable, ...)


@dataclass(frozen=True)
class LaunchPlan:
    service: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    service_dir: str = ""            # <host root>/services/<name>
    workdir: str | None = None
    restart_on_failure: bool = True

    @property
    def log_path(self) -> str:
        return posixpath.join(self.service_dir, "service.log")

    @property
    def pid_path(self) -> str:
        return posixpath.join(self.service_dir, "service.pid")

    @property
    def env_file(self) -> str:
        """0600 file with secrets (KEY=value lines), read by the launcher, never logged."""
        return posixpath.join(self.service_dir, "secrets.env")

    @property
    def manifest_path(self) -> str:
        """JSON manifest on the host: the host-side truth about what runs there."""
        return posixpath.join(self.service_dir, "manifest.json")


class Supervisor(ABC):
    """Starts, stops and inspects one kind of supervised process on a host."""

    name: str = "base"

    @abstractmethod
    def start(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        """Launch the service; return its pid when known. Secrets travel on stdin."""

    @abstractmethod
    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> None:
        """TERM the whole process group, KILL after timeout. Raise if it survives."""

    @abstractmethod
    def state(self, plan: LaunchPlan) -> ProcessState:
        """Is the service's process alive right now?"""
