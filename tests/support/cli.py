"""Run the real CLI entry point (error boundary included) in-process: the one CLI runner
of the tests (a child process is tests.support.procs.spawn)."""

from __future__ import annotations

from typing import NamedTuple

from click.testing import CliRunner


class CliResult(NamedTuple):
    """What the command left: unpacks as (code, stdout, stderr)."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            prog: str = "pi") -> CliResult:
    import sys

    from gpumod.cli.main import main

    runner = CliRunner()
    old_argv0 = sys.argv[0]
    sys.argv[0] = prog
    try:
        with runner.isolation(input=input, env=env) as streams:
            out, err = streams[0], streams[1]
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            return CliResult(code, out.getvalue().decode(), err.getvalue().decode())
    finally:
        sys.argv[0] = old_argv0

