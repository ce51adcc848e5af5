"""Entry point for both `gpumod` and `pi`.

Command modules are imported only when their command runs, and `--help` is answered
without importing click at all (gpumod.cli.fasthelp), so help and quick listings stay
fast; the click group itself is gpumod.cli.group, the table of commands
gpumod.cli.commands. Every error surfaces here, once: one line (`error: ...`, then
`hint: ...`), a non-zero exit, a traceback only with --debug.
"""

from __future__ import annotations

import os
import sys


def __getattr__(name: str) -> object:
    """`cli` (the click group) and `LazyGroup`, built on first use: click is not imported
    for `--help`."""
    if name in ("cli", "LazyGroup"):
        from gpumod.cli import group

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("GPUMOD_DEBUG") == "1"


def _terminate_like_ctrl_c() -> dict:
    """SIGTERM and SIGHUP raise errors.Interrupted (a KeyboardInterrupt), so the cleanup
    Ctrl+C gets runs for them too (a half-started engine is stopped, the record tells
    the truth). Only the first raises: later ones must not cut that cleanup short.
    Returns the previous handlers (main restores them)."""
    import signal

    from gpumod.errors import Interrupted

    raised: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave the process's handlers alone
            break
    return previous


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gpumod"
    if prog not in {"gpumod", "pi"}:
        prog = "gpumod"
    if argv in (["--help"], ["-h"]):
        _top_help(prog)
    import signal

    previous = _terminate_like_ctrl_c()
    try:
        _run(argv, prog)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _top_help(prog: str) -> None:
    from gpumod.cli.fasthelp import top_help

    try:
        sys.stdout.write(top_help(prog))
        sys.stdout.flush()
    except BrokenPipeError:
        sys.exit(141)
    sys.exit(0)


def _run(argv: list[str], prog: str) -> None:
    import click

    from gpumod.cli.group import cli
    from gpumod.errors import GpumodError

    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except GpumodError as exc:
        if _debug_requested(argv):
            import traceback

            traceback.print_exc()
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _click_error(exc, prog)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted ({exc})" if str(exc) else "interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:
        if _debug_requested(argv):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with --debug for the traceback, and please report it",
                   err=True)
        sys.exit(70)


def _click_error(exc: object, prog: str) -> None:
    """click's own errors (bad option values, unknown options, missing arguments) in the
    project's shape: one `error:` line, then a `hint:` naming the command's --help."""
    import click

    assert isinstance(exc, click.ClickException)
    message = " ".join(exc.format_message().split())  # click may wrap over lines
    click.echo(f"error: {message}", err=True)
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError):
        path = ctx.command_path if ctx is not None else prog
        click.echo(f"hint: see `{path} --help`", err=True)


if __name__ == "__main__":
    main()
