"""MockTransport: answers commands from a handler, for unit tests of callers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

from gpumod.hosts.transports.base import CommandResult, Transport

Handler = Callable[[tuple[str, ...], str | None], CommandResult | tuple[int, str, str]]


class MockTransport(Transport):
    """Like httpx.MockTransport: every run() goes to `handler(argv, input)`.

    The handler returns a CommandResult or (returncode, stdout, stderr).
    Every call is recorded in `calls` so tests can assert what was sent.
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

    def popen(self, argv: Sequence[str], *, stdin: int | None = subprocess.DEVNULL,
              merge_stderr: bool = True) -> subprocess.Popen[bytes]:
        result = self.run(argv)
        script = "import sys; sys.stdout.write(sys.argv[1]); sys.exit(int(sys.argv[2]))"
        import sys

        return subprocess.Popen([sys.executable, "-c", script, result.stdout,
                                 str(result.returncode)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)

    def user_command_argv(self, command: str) -> list[str]:
        return ["sh", "-c", command]

    def interactive_argv(self, argv: Sequence[str] | None = None) -> list[str]:
        return ["true"]
