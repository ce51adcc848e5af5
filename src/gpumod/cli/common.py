"""Shared CLI helpers: options every host command takes, output, the store."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # rich and the store load lazily (gpumod --help stays fast)
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gpumod.store.db import Store

F = TypeVar("F", bound=Callable[..., Any])


def pod_option(func: F) -> F:
    return click.option("--pod", "pod", metavar="NAME",
                        help="Target this pod instead of the active one ('local' for this box).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of a table.")(func)


def store() -> Store:
    from gpumod.ops.session import open_store

    return open_store()


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def console(stderr: bool = False) -> Console:
    """A rich Console; colour only on a terminal, never markup from data."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False,
                   width=None if sys.stdout.isatty() else 200)


def table(*columns: str, title: str | None = None) -> Table:
    from rich import box
    from rich.table import Table

    t = Table(*columns, title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    return t


def plain(text: object) -> Text:
    """Untrusted text (names, model ids, log lines) as rich Text: never markup."""
    from rich.text import Text

    return Text(str(text) if text is not None else "")


def info(message: str) -> None:
    click.echo(message, err=True)


def run_tunnel(argv: list[str], *, host: str, hint: str) -> None:
    """Run an `ssh -N -L` tunnel in the foreground until it closes or we are stopped.

    Ctrl+C closes it (exit 0: the usual way out); SIGTERM/SIGHUP (errors.Interrupted)
    close it and exit 130. Either way the ssh child is stopped and waited for before
    this returns: it never outlives the command.
    """
    import subprocess

    from gpumod.errors import Interrupted, TransportError

    proc = subprocess.Popen(argv)
    try:
        code = proc.wait()
    except KeyboardInterrupt as exc:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(exc, Interrupted):
            raise
        return
    if code not in (0, 130, -2, -15):
        raise TransportError(f"the tunnel to {host} closed (ssh exit {code})", hint=hint)
