"""MockTransport: answers commands from a handler, for unit tests of callers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from gpumod.hosts.transports.base import CommandResult, Transport
from gpumod.hosts.transports.stream import Stream, canned_stream

Handler = Callable[[tuple[str, ...], str | None], CommandResult | tuple[int, str, str]]


class MockTransport(Transport):
    """Like httpx.MockTransport: every run() goes to `handler(argv, input)`.

    The handler returns a CommandResult or (returncode, stdout, stderr), or raises a
    gpumod error (an unreachable host...). stream() goes to the same handler and hands
    its stdout and stderr out as the stream. Every call is recorded in `calls`.
    """

    label = "mock"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float | None = 60) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, input))
        answer = self.handler(key, input)
        if isinstance(answer, CommandResult):
            return answer
        code, out, err = answer
        return CommandResult(key, code, out, err)

    @contextlib.contextmanager
    def stream(self, argv: Sequence[str], *, input: str | None = None) -> Iterator[Stream]:
        result = self.run(argv, input=input)
        yield canned_stream(result.stdout + result.stderr, result.returncode)

    def user_command_argv(self, command: str) -> list[str]:
        return ["sh", "-c", command]

    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        return ["true"]
