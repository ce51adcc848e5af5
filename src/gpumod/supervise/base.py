"""What a supervisor is given, and the one contract every supervisor keeps.

A LaunchPlan is everything needed to run one service on its host: the argv,
the non-secret environment, and where the service's folder is. Secrets are
never part of the plan's argv or env: supervisors receive them separately and
write them to a 0600 env file through stdin.

The contract (:class:`Supervisor`) is wide enough that the operations layer never
asks which supervisor it has: pid, state, log, start, stop, remove. A start has two
halves so that the service is recorded before its engine can run:

1. ``prepare`` writes everything (env, secrets, manifest or unit) and fixes the
   service's process identity, without running the engine;
2. ``release`` lets the engine run.

``start`` does both and calls ``before_run(pid)`` in between (the lifecycle records
the identity there); when that raises, the prepared process is removed and the
engine never runs.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from gpumod.errors import GpumodError, add_hint


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
    workdir: str | None = None       # the spec's own working directory, if it has one
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

    @property
    def run_dir(self) -> str:
        """The engine's working directory: the spec's, else an empty folder of its own.

        Never the service folder itself: it holds secrets.env, and an engine that serves
        files from its working directory would serve it.
        """
        return self.workdir or posixpath.join(self.service_dir, "work")

    @property
    def kept_log_path(self) -> str:
        """Where the log of a failed start is kept until the next start of that name."""
        parent, name = posixpath.split(self.service_dir.rstrip("/"))
        return posixpath.join(parent, ".failed", f"{name}.log")


BeforeRun = Callable[[int | None], None]


class Supervisor(ABC):
    """Starts, stops and inspects one kind of supervised process on a host."""

    name: str = "base"
    #: the service's own process group holds its port on the host, so a health answer
    #: can be traced to it (False where a proxy holds the port, e.g. Docker's)
    owns_port: bool = True

    def start(self, plan: LaunchPlan, secrets: dict[str, str], *,
              before_run: BeforeRun | None = None) -> int | None:
        """prepare -> before_run(identity) -> release; returns the pid when known.

        If before_run raises, the prepared process is removed and the engine never runs.
        """
        held = self.prepare(plan, secrets)
        if before_run is not None:
            try:
                before_run(held)
            except BaseException as exc:
                try:
                    self.stop(plan, timeout=5)
                except GpumodError as stop_exc:  # say so: the held launcher may be left
                    add_hint(exc, f"the held launcher of {plan.service} could not be "
                                  f"stopped: {stop_exc.message}")
                raise
        return self.release(plan, held)

    @abstractmethod
    def prepare(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        """Write everything the service needs (every write checked) and fix its process
        identity, without running the engine. Returns the held pid when there is one."""

    @abstractmethod
    def release(self, plan: LaunchPlan, held: int | None) -> int | None:
        """Let the prepared engine run; returns its pid when known."""

    @abstractmethod
    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> str:
        """TERM, KILL after timeout: 'stopped', 'killed' or 'not-running'.

        Raises when the service may still run (it survived, or the host did not answer).
        """

    @abstractmethod
    def remove(self, plan: LaunchPlan, *, timeout: float = 20,
               keep_log: bool = False) -> str:
        """stop, then delete what the service left on the host (folder, unit, container).

        keep_log: keep its log at ``plan.kept_log_path`` (a failed start). Nothing is
        deleted when the stop cannot be confirmed (it raises).
        """

    @abstractmethod
    def state(self, plan: LaunchPlan) -> ProcessState:
        """Is the service's process alive right now?"""

    @abstractmethod
    def pid(self, plan: LaunchPlan) -> int | None:
        """The service's main pid on its host right now (None when not running)."""

    def status_source(self, plan: LaunchPlan) -> tuple[str, str] | None:
        """Where the host-side status probe (one round trip for every service of a host)
        finds the service's process: ("", "") its pid file in the service folder, (scope,
        unit) a systemd unit; None when only this supervisor can tell (state(), pid())."""
        return ("", "")

    @abstractmethod
    def read_log(self, plan: LaunchPlan, lines: int = 200) -> str:
        """The last lines of the service's log ('' when there is none or no answer)."""
