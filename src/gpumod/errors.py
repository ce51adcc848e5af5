"""Typed errors. Every failure a user can cause or meet is one of these.

The CLI's single error boundary prints ``error: <message>`` and, when there
is one, ``hint: <hint>``, then exits with ``exit_code``. Nothing else in the
code prints errors or calls ``sys.exit``.
"""

from __future__ import annotations


class GpumodError(Exception):
    """Base class: a one-line message, an optional hint and an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(GpumodError):
    """The user typed something we cannot act on (bad name, size, flag)."""

    exit_code = 2


class NotFoundError(GpumodError):
    """A named pod, service, mode or model does not exist."""

    exit_code = 3


class ConflictError(GpumodError):
    """The name, port or GPU is already taken, or a lock is held."""

    exit_code = 4


class ConfigError(GpumodError):
    """A missing environment variable, bad preset, or broken config file."""

    exit_code = 2


class TransportError(GpumodError):
    """A host could not be reached, or the connection failed mid-way."""

    exit_code = 5


class HostUnreachableError(TransportError):
    """Connection refused, timed out, or name not resolved."""


class AuthenticationError(TransportError):
    """The host refused our key or password."""


class RemoteCommandError(GpumodError):
    """A command on the host ran and failed."""

    exit_code = 6

    def __init__(
        self, message: str, *, returncode: int, stderr: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stderr = stderr


class EngineError(GpumodError):
    """An inference engine failed to start, answer, sleep or wake."""

    exit_code = 7


class CapacityError(GpumodError):
    """The requested services do not fit on the GPUs."""

    exit_code = 8


class Cancelled(GpumodError):
    """The user pressed Ctrl+C; whatever was half-done has been undone."""

    exit_code = 130


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: handled like Ctrl+C (clean up, then exit 130).

    A KeyboardInterrupt, so every ``except KeyboardInterrupt`` cleanup runs for it too.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
