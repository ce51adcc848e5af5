"""LocalTransport: commands on this machine, by subprocess."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager

from gpumod.errors import RemoteCommandError
from gpumod.hosts.transports.base import CommandResult, Transport
from gpumod.hosts.transports.stream import Stream, process_stream, too_long


class LocalTransport(Transport):
    label = "local"

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float | None = 60) -> CommandResult:
        try:
            proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                                  timeout=timeout, check=False,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found ({exc})")
        except subprocess.TimeoutExpired as exc:
            raise RemoteCommandError(f"{argv[0]} did not finish within {timeout:g}s",
                                     returncode=124) from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise too_long(self.label, argv) from None
            raise
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def stream(self, argv: Sequence[str], *,
               input: str | None = None) -> AbstractContextManager[Stream]:
        return process_stream(argv, input=input, label=self.label)

    def user_command_argv(self, command: str) -> list[str]:
        return ["sh", "-c", command]

    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        import os

        return list(argv) if argv else [os.environ.get("SHELL", "/bin/sh"), "-l"]
