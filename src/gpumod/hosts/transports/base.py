"""The Transport interface: run an argv on a host, get its real result back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from gpumod.errors import RemoteCommandError
from gpumod.hosts.transports.stream import Stream


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self, what: str, *, hint: str | None = None) -> CommandResult:
        """Raise RemoteCommandError naming `what` unless the command succeeded."""
        if not self.ok:
            detail = last_line(self.stderr) or last_line(self.stdout) or f"exit code {self.returncode}"
            raise RemoteCommandError(f"{what} failed: {detail}", returncode=self.returncode,
                                     stderr=self.stderr, hint=hint)
        return self


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Transport(ABC):
    """Runs commands given as argv lists on one host.

    Implementations never pass a string through a shell they build from user
    input: the argv is the data, quoting happens in exactly one place.
    Secrets go in ``input`` (stdin), never in argv. Two ways to run: run() to
    completion, stream() for output that matters while it comes.
    """

    #: a short label for messages ("local", "pod dc1")
    label: str = "host"

    @abstractmethod
    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float | None = 60) -> CommandResult:
        """Run argv to completion and return its exit code, stdout and stderr."""

    @abstractmethod
    def stream(self, argv: Sequence[str], *,
               input: str | None = None) -> AbstractContextManager[Stream]:
        """Run argv with its stdout and stderr merged and read as they come.

        ``with t.stream(argv) as out: for line in out.iter_lines(): ...``; then
        ``out.returncode``. Raises the same typed errors as run() (an unreachable host,
        a refused key) and never hands out an exit code that is the transport's own.
        `input` (small: a secret line) is written to stdin, then stdin is closed.
        Leaving the block early stops the local process.
        """

    @abstractmethod
    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        """The local argv that runs argv (or a login shell) attached to this terminal."""

    @abstractmethod
    def user_command_argv(self, command: str) -> list[str]:
        """The local argv running a command line the user typed (`pi ssh NAME "CMD"`).

        The one place a user's string reaches a shell on the host, by design.
        """

    def run_script(self, script: str, args: Sequence[str] = (), *, input: str | None = None,
                   timeout: float | None = 60) -> CommandResult:
        """Run a fixed shell script shipped with gpumod, with args as positional parameters."""
        return self.run(["sh", "-c", script, "sh", *args], input=input, timeout=timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (the SSH master keeps living for ControlPersist)."""
