"""SSHTransport: the system OpenSSH client with connection multiplexing.

One master connection per host (ControlMaster=auto, ControlPersist) is
shared by every command and every gpumod process, so a command after the
first costs a round trip, not a handshake. Host keys are checked
(StrictHostKeyChecking=accept-new): never disabled. The user's own options
and ~/.ssh/config keep working.
"""

from __future__ import annotations

import errno
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from gpumod import paths
from gpumod.errors import (
    AuthenticationError,
    HostUnreachableError,
    RemoteCommandError,
    TransportError,
)
from gpumod.hosts.sshcmd import SSHTarget
from gpumod.hosts.transports.base import CommandResult, Transport
from gpumod.hosts.transports.stream import (
    Stream,
    check_remote_length,
    process_stream,
    too_long,
)

CONNECT_TIMEOUT = 10
CONTROL_PERSIST = "10m"

# First value wins in OpenSSH, so these come before the user's options:
# nobody can turn host key checking off through gpumod.
_ENFORCED = ["-o", "StrictHostKeyChecking=accept-new"]


class SSHTransport(Transport):
    def __init__(self, target: SSHTarget, *, label: str = "pod",
                 connect_timeout: int = CONNECT_TIMEOUT) -> None:
        self.target = target
        self.label = label
        self.connect_timeout = connect_timeout

    # -- argv building (pure, unit-tested) ------------------------------
    def base_argv(self, *, batch: bool = True, tty: bool = False) -> list[str]:
        control = paths.control_dir() / "%C"
        argv = ["ssh", *_ENFORCED, *self.target.options,
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={control}",
                "-o", f"ControlPersist={CONTROL_PERSIST}",
                "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if batch:
            argv += ["-o", "BatchMode=yes"]
        argv.append("-tt" if tty else "-T")
        return argv

    def command_argv(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        """ssh ... destination -- 'quoted command' (one string the remote shell splits)."""
        command = shlex.join(argv)
        check_remote_length(self.label, command)
        return [*self.base_argv(batch=not tty, tty=tty), "--", self.target.destination, command]

    # -- running ----------------------------------------------------------
    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float | None = 60) -> CommandResult:
        full = self.command_argv(argv)
        try:
            proc = subprocess.run(full, input=input, capture_output=True, text=True,
                                  timeout=timeout, check=False,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise TransportError(
                f"{self.label}: no answer within {timeout:g}s for {argv[0]}",
                hint="check the pod is up; `pi ssh` shows what the connection does",
            ) from exc
        except FileNotFoundError as exc:
            raise TransportError("the ssh client is not installed",
                                 hint="install OpenSSH (apt-get install openssh-client)") from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise too_long(self.label, full) from None
            raise
        if proc.returncode == 255:
            raise_for_ssh_failure(self.label, proc.stderr, connection_lost=self.master_lost)
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def stream(self, argv: Sequence[str], *,
               input: str | None = None) -> AbstractContextManager[Stream]:
        # The remote command merges its own stderr into stdout, so ssh's stderr holds only
        # ssh's messages: exit 255 is classified from them exactly as in run().
        merged = ["sh", "-c", 'exec "$@" 2>&1', "sh", *argv]

        def on_exit(code: int, stderr: str) -> None:
            if code == 255:
                raise_for_ssh_failure(self.label, stderr, connection_lost=self.master_lost)

        return process_stream(self.command_argv(merged), input=input, label=self.label,
                              separate_stderr=True, on_exit=on_exit, missing=TransportError(
                                  "the ssh client is not installed",
                                  hint="install OpenSSH (apt-get install openssh-client)"))

    def master_lost(self) -> bool:
        """Is there no master connection any more? (It dies with the connection.)"""
        try:
            check = subprocess.run([*self.base_argv(), "-O", "check", self.target.destination],
                                   capture_output=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return True
        return check.returncode != 0

    def user_command_argv(self, command: str) -> list[str]:
        return [*self.base_argv(), "--", self.target.destination, command]

    def resolved_hostname(self) -> str:
        """The real host name after ~/.ssh/config (`ssh -G`), for endpoint URLs."""
        proc = subprocess.run(["ssh", "-G", *self.target.options, self.target.destination],
                              capture_output=True, text=True, check=False, timeout=10)
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "hostname" and value:
                return value.strip()
        return self.target.host

    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        base = self.base_argv(batch=False, tty=True)
        if not argv:
            return [*base, "--", self.target.destination]
        return [*base, "--", self.target.destination, shlex.join(argv)]

    def close(self) -> None:
        """Ask the master connection to exit (used by tests and `pods remove`)."""
        subprocess.run([*self.base_argv(), "-O", "exit", self.target.destination],
                       capture_output=True, check=False, timeout=10)


_PATTERNS: list[tuple[re.Pattern[str], type[TransportError], str]] = [
    (re.compile(r"Permission denied|Too many authentication failures", re.I),
     AuthenticationError, "check the key (-i), the user, and that the pod accepts it"),
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.I),
     AuthenticationError,
     "the host key changed: if the pod was re-created, remove its old key with "
     "`ssh-keygen -R HOST`"),
    (re.compile(r"timed out|Connection timed out|Operation timed out", re.I),
     HostUnreachableError, "is the pod running? check its address and port"),
    (re.compile(r"Connection refused", re.I),
     HostUnreachableError, "is sshd running on the pod, and is the port right?"),
    (re.compile(r"Could not resolve hostname|Name or service not known", re.I),
     HostUnreachableError, "check the host name in the SSH command"),
    (re.compile(r"No route to host|Network is unreachable", re.I),
     HostUnreachableError, "check the network and the pod's address"),
    (re.compile(r"closed by remote host|Connection reset|kex_exchange", re.I),
     HostUnreachableError, "the connection dropped; try again"),
]


def raise_for_ssh_failure(label: str, stderr: str, *,
                          connection_lost: Callable[[], bool] = lambda: True) -> None:
    """Exit code 255 from ssh: translate its message into a typed error.

    With no message at all, ssh's connection died under it (sshd killed, the pod gone:
    a multiplexed client just exits 255), unless the remote command itself exited 255
    over a connection that is still up; `connection_lost()` tells the two apart.
    """
    text = " ".join(stderr.split())
    for pattern, error, hint in _PATTERNS:
        if pattern.search(text):
            raise error(f"{label}: {_first_ssh_line(stderr)}", hint=hint)
    if text:
        raise TransportError(f"{label}: ssh failed: {_first_ssh_line(stderr)}",
                             hint="run the SSH command by hand to see more")
    if connection_lost():
        raise HostUnreachableError(f"{label}: the SSH connection was lost",
                                   hint="is the pod up? `pi ssh` tries the connection again")
    raise RemoteCommandError(f"{label}: the remote command exited with 255", returncode=255)


def _first_ssh_line(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line and not line.lower().startswith("warning: permanently added"):
            return line
    return stderr.strip()
