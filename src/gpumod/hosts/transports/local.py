"""LocalTransport: commands on this machine, by subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from gpumod.errors import RemoteCommandError
from gpumod.hosts.transports.base import CommandResult, Transport


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
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def popen(self, argv: Sequence[str], *, stdin: int | None = subprocess.DEVNULL,
              merge_stderr: bool = True) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)

    def user_command_argv(self, command: str) -> list[str]:
        return ["sh", "-c", command]

    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        import os

        return list(argv) if argv else [os.environ.get("SHELL", "/bin/sh"), "-l"]
