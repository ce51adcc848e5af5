"""The TUI's command line: `/status`, `/switch MODE`, `/simulate ...`, `/sleep NAME`, ...

Parsing only (no Textual import), so it is tested on its own.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from gpumod.errors import UsageError
from gpumod.ops import inputs

# name -> (usage, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("", "GPU picture and services of the current host"),
    "switch": ("MODE", "switch the host to a mode (stop/sleep, start/wake, health gate)"),
    "simulate": ("[MODE] [--add a,b] [--remove c] [--context NAME=TOKENS]",
                 "would it fit? changes nothing"),
    "start": ("NAME", "start a service"),
    "stop": ("NAME", "stop a service"),
    "sleep": ("NAME [l1|l2]", "put a service to sleep (frees its GPU memory)"),
    "wake": ("NAME", "wake a sleeping service"),
    "logs": ("NAME [LINES]", "the last lines of a service's log"),
    "host": ("NAME", "show another host (pod)"),
    "gateway": ("", "the host's gateway: URL, state, each model's state, idle time, TTL"),
    "help": ("", "this list"),
    "quit": ("", "leave"),
}
ALIASES = {"q": "quit", "exit": "quit", "?": "help", "h": "help", "sim": "simulate",
           "log": "logs", "mode": "switch", "gw": "gateway"}


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    contexts: dict[str, int] = field(default_factory=dict)
    lines: int = 200
    level: str | None = None

    @property
    def target(self) -> str:
        return self.args[0] if self.args else ""


def help_lines() -> list[str]:
    return [f"/{name} {usage}".rstrip().ljust(62) + f" {text}"
            for name, (usage, text) in COMMANDS.items()]


def _names(value: str, option: str) -> tuple[str, ...]:
    names = tuple(inputs.names(value))
    if not names:
        raise UsageError(f"{option} needs service names, e.g. {option} a,b")
    return names


def parse(line: str) -> Command:
    """One command line -> Command; UsageError says what is wrong."""
    text = line.strip()
    if not text:
        raise UsageError("empty command", hint="type /help")
    if not text.startswith("/"):
        raise UsageError(f"commands start with '/': {text[:40]!r}", hint="type /help")
    try:
        words = shlex.split(text[1:])
    except ValueError as exc:
        raise UsageError(f"cannot read the command: {exc}") from exc
    if not words:
        raise UsageError("empty command", hint="type /help")
    name = ALIASES.get(words[0].lower(), words[0].lower())
    rest = words[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command /{words[0]}", hint="type /help")
    if name in ("status", "help", "quit", "gateway"):
        if rest:
            raise UsageError(f"/{name} takes no arguments")
        return Command(name)
    if name == "simulate":
        return _parse_simulate(rest)
    if name == "sleep":
        if not 1 <= len(rest) <= 2:
            raise UsageError("usage: /sleep NAME [l1|l2]")
        level = rest[1].lower() if len(rest) == 2 else None
        if level not in (None, "l1", "l2"):
            raise UsageError(f"unknown sleep level {rest[1]!r}", hint="use l1 or l2")
        return Command(name, (rest[0],), level=level)
    if name == "logs":
        if not 1 <= len(rest) <= 2:
            raise UsageError("usage: /logs NAME [LINES]")
        lines = 200
        if len(rest) == 2:
            if not rest[1].isdigit() or not 1 <= int(rest[1]) <= 10_000:
                raise UsageError(f"LINES must be a number from 1 to 10000, got {rest[1]!r}")
            lines = int(rest[1])
        return Command(name, (rest[0],), lines=lines)
    usage = COMMANDS[name][0]
    if len(rest) != 1:
        raise UsageError(f"usage: /{name} {usage}")
    return Command(name, (rest[0],))


def _parse_simulate(words: list[str]) -> Command:
    mode: list[str] = []
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    contexts: dict[str, int] = {}
    i = 0
    while i < len(words):
        word = words[i]
        option, eq, inline = word.partition("=")
        if option in ("--add", "--remove", "--context"):
            if eq:
                value = inline
            elif i + 1 < len(words):
                i += 1
                value = words[i]
            else:
                raise UsageError(f"{option} needs a value")
            if option == "--add":
                add += _names(value, option)
            elif option == "--remove":
                remove += _names(value, option)
            else:
                service, tokens = inputs.context_item(value, option)
                contexts[service] = tokens
        elif word.startswith("-"):
            raise UsageError(f"unknown option {word!r} for /simulate",
                             hint="use --add, --remove, --context")
        else:
            mode.append(word)
        i += 1
    if len(mode) > 1:
        raise UsageError("/simulate takes one mode", hint="usage: /simulate " +
                         COMMANDS["simulate"][0])
    if not mode and not add:
        raise UsageError("nothing to simulate", hint="usage: /simulate " +
                         COMMANDS["simulate"][0])
    return Command("simulate", tuple(mode), add=add, remove=remove, contexts=contexts)
