"""Parse the SSH command a provider gives ("ssh -p 2222 root@1.2.3.4").

The string is split with shlex and every option the user typed is kept, in
order, so `-i key`, `-J bastion`, `-o ProxyJump=...` and friends keep working.
Options that would change what our commands do (background, no command,
control sockets) are refused with a clear error.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from gpumod.errors import UsageError

# OpenSSH flags that take an argument (ssh(1), SYNOPSIS).
_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")
_NO_ARG = set("46AaCfGgKkMNnqsTtVvXxYy")
# Flags that break a non-interactive command run, or manage sockets we own.
_REFUSED = {"f": "backgrounds ssh", "N": "runs no command", "W": "forwards stdio",
            "O": "controls a master", "M": "makes a control master", "S": "sets a control path",
            "G": "only prints config", "V": "only prints the version", "Q": "only queries"}
# Flags that we decide per call (terminal allocation).
_DROPPED = {"t", "T"}


@dataclass(frozen=True)
class SSHTarget:
    """A parsed SSH command: options (argv) and destination, plus what we know."""

    options: tuple[str, ...]
    destination: str
    user: str | None = None
    host: str = ""
    port: int | None = None
    extras: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        return [*self.options, self.destination]

    @property
    def display(self) -> str:
        return shlex.join(["ssh", *self.options, self.destination])


def parse_ssh_command(command: str) -> SSHTarget:
    """Turn "ssh [options] [user@]host [options]" into an SSHTarget, or raise UsageError.

    Options after the host are kept before it (OpenSSH takes them in both places); a
    remote command after the host is refused.
    """
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"cannot parse SSH command: {exc}",
                         hint='quote it whole, e.g. "ssh -p 2222 root@1.2.3.4"') from exc
    if not words:
        raise UsageError("the SSH command is empty", hint='give it like "ssh root@1.2.3.4"')
    if words[0].rsplit("/", 1)[-1] != "ssh":
        raise UsageError(f"the SSH command must start with 'ssh', not {words[0]!r}",
                         hint='copy the command your provider shows, e.g. "ssh root@1.2.3.4"')
    options: list[str] = []
    port: int | None = None
    user: str | None = None
    destination: str | None = None
    # As OpenSSH parses it: options, the destination, then options again (ssh.c restarts
    # getopt after the host); "--" ends the options, and the first other word after the
    # destination starts a remote command.
    options_ended = False
    i = 1
    while i < len(words):
        word = words[i]
        is_option = not options_ended and word.startswith("-") and len(word) > 1
        if destination is not None and not is_option:
            raise UsageError(
                f"the SSH command has a remote command after the host: {shlex.join(words[i:])!r}",
                hint="give only ssh, its options and the host",
            )
        if is_option and word == "--":
            options_ended = True
            i += 1
            continue
        if is_option:
            j = 1
            while j < len(word):
                flag = word[j]
                if flag in _REFUSED:
                    raise UsageError(f"ssh option -{flag} is not supported here ({_REFUSED[flag]})",
                                     hint=f"remove -{flag} from the SSH command")
                if flag in _WITH_ARG:
                    value = word[j + 1:]
                    if not value:
                        i += 1
                        if i >= len(words):
                            raise UsageError(f"ssh option -{flag} needs a value")
                        value = words[i]
                    if flag == "p":
                        port = _parse_port(value)
                    elif flag == "l":
                        user = value
                    elif flag == "o":
                        key, _, val = value.partition("=")
                        if key.strip().lower() in {"controlmaster", "controlpath", "controlpersist"}:
                            raise UsageError(f"ssh option -o {key} is managed by gpumod",
                                             hint=f"remove -o {value} from the SSH command")
                        if key.strip().lower() == "port":
                            port = _parse_port(val.strip())
                        elif key.strip().lower() == "user":
                            user = val.strip()
                    options.extend([f"-{flag}", value])
                    break
                if flag in _NO_ARG:
                    if flag not in _DROPPED:
                        options.append(f"-{flag}")
                    j += 1
                    continue
                raise UsageError(f"unknown ssh option -{flag}", hint="see `man ssh`")
            i += 1
            continue
        destination = word
        i += 1
    if destination is None:
        raise UsageError("the SSH command names no host", hint='e.g. "ssh root@1.2.3.4"')
    host = destination
    if host.startswith("ssh://"):
        rest = host[len("ssh://"):]
        if "@" in rest:
            user, rest = rest.rsplit("@", 1)
        if ":" in rest and not rest.startswith("["):
            rest, port_text = rest.rsplit(":", 1)
            port = _parse_port(port_text)
        host = rest
    elif "@" in host:
        user, host = host.rsplit("@", 1)
    host = host.strip("[]")
    if not host or host.startswith("-"):
        raise UsageError(f"invalid SSH host {destination!r}")
    return SSHTarget(options=tuple(options), destination=destination, user=user, host=host,
                     port=port)


def _parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UsageError(f"invalid SSH port {text!r}", hint="use a number, e.g. -p 2222") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid SSH port {port}", hint="use a number between 1 and 65535")
    return port
