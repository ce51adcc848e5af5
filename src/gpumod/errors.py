"""Typed errors. Every failure a user can cause or meet is one of these.

The CLI's single error boundary prints ``error: <message>`` and, when there
is one, ``hint: <hint>``, then exits with ``exit_code``. Nothing else in the
code prints errors or calls ``sys.exit``.
"""

from __future__ import annotations


class GpumodError(Exception):
    """Base class: a one-line message, an optional hint, an exit code and a kind.

    ``code`` is the machine-readable kind (what MCP clients and ``--json`` consumers
    branch on); ``exit_code`` is what the CLI exits with.
    """

    exit_code = 1
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def text(self) -> str:
        """The message, then the hint on its own line: what the CLI's boundary prints."""
        return self.message + (f"\nhint: {self.hint}" if self.hint else "")

    def to_json(self) -> dict[str, object]:
        """The error as data: message, kind, exit code, and the hint when there is one."""
        out: dict[str, object] = {"error": self.message, "kind": self.code,
                                  "exit_code": self.exit_code}
        if self.hint:
            out["hint"] = self.hint
        return out


class UsageError(GpumodError):
    """The user typed something we cannot act on (bad name, size, flag)."""

    exit_code = 2
    code = "usage"


class NotFoundError(GpumodError):
    """A named pod, service, mode or model does not exist."""

    exit_code = 3
    code = "not_found"


class ConflictError(GpumodError):
    """The name, port or GPU is already taken, or a lock is held."""

    exit_code = 4
    code = "conflict"


class ConfigError(GpumodError):
    """A missing environment variable, bad preset, or broken config file."""

    exit_code = 2
    code = "config"


class TransportError(GpumodError):
    """A host could not be reached, or the connection failed mid-way."""

    exit_code = 5
    code = "transport"


class HostUnreachableError(TransportError):
    """Connection refused, timed out, or name not resolved."""

    code = "host_unreachable"


class AuthenticationError(TransportError):
    """The host refused our key or password."""

    code = "authentication"


class RemoteCommandError(GpumodError):
    """A command on the host ran and failed."""

    exit_code = 6
    code = "remote_command"

    def __init__(
        self, message: str, *, returncode: int, stderr: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stderr = stderr


class EngineError(GpumodError):
    """An inference engine failed to start, answer, sleep or wake."""

    exit_code = 7
    code = "engine"


class CapacityError(GpumodError):
    """The requested services do not fit on the GPUs."""

    exit_code = 8
    code = "capacity"


class Cancelled(GpumodError):
    """The user pressed Ctrl+C; whatever was half-done has been undone."""

    exit_code = 130
    code = "cancelled"


def add_hint(exc: BaseException, note: str) -> None:
    """Say NOTE with EXC: in the hint the CLI prints (a gpumod error), else as a note
    on the traceback. For what a cleanup could not do while EXC goes on up."""
    if isinstance(exc, GpumodError):
        exc.hint = f"{exc.hint}; {note}" if exc.hint else note
    else:
        exc.add_note(note)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: handled like Ctrl+C (clean up, then exit 130).

    A KeyboardInterrupt, so every ``except KeyboardInterrupt`` cleanup runs for it too.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
