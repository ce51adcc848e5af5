"""Run the real CLI entry point (error boundary included) in-process."""

from __future__ import annotations

from dataclasses import dataclass

from click.testing import CliRunner


@dataclass
class CliResult:
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


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI entry point in-process with pytest's capsys: (exit code, stdout, stderr)."""
    from gpumod.cli.main import main

    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
