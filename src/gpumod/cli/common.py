"""Shared CLI helpers: options every host command takes, output, the store."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # the store loads lazily (gpumod --help stays fast)
    from gpumod.cli.textout import Console, Styled, Table
    from gpumod.store.db import Store

F = TypeVar("F", bound=Callable[..., Any])


def pod_option(func: F) -> F:
    return click.option("--pod", "pod", metavar="NAME",
                        help="Target this pod instead of the active one ('local' for this box).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON instead of a table.")(func)


def gateway_options(func: F) -> F:
    """--idle-ttl and --alias: how the gateway (and `gpumod watch`) treat a service."""
    func = click.option("--alias", "aliases", multiple=True, metavar="NAME",
                        help="Another `model` name the gateway routes to it (repeatable); "
                             "one another service of the host answers to is refused.")(func)
    return click.option("--idle-ttl", metavar="TTL",
                        help="Put it to rest after this long idle (10m, 90s, 1h, 0, never): "
                             "the gateway and `gpumod watch` sleep it (or stop it if it "
                             "cannot sleep). Default: the gateway's host default (never, "
                             "unless `gateway start --idle-ttl`).")(func)


def store() -> Store:
    from gpumod.ops.session import open_store

    return open_store()


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def console(stderr: bool = False) -> Console:
    """Where listings print: colour only on a terminal, never markup from data
    (gpumod.cli.textout; rich only for rich renderables)."""
    from gpumod.cli.textout import Console

    return Console(stderr=stderr)


def table(*columns: str, title: str | None = None) -> Table:
    from gpumod.cli.textout import Table

    return Table(*columns, title=title)


def plain(text: object, style: str = "") -> Styled:
    """Untrusted text (names, model ids, log lines) as text with a style: never markup."""
    from gpumod.cli.textout import Styled

    return Styled(text, style)


def info(message: str) -> None:
    click.echo(message, err=True)


def _die_with(parent: int) -> Callable[[], None]:
    """For a child, before exec: the kernel sends it SIGTERM when `parent` dies, even by
    SIGKILL, which no handler sees (Linux's PR_SET_PDEATHSIG); elsewhere nothing.
    libc is looked up here, in the parent: the forked child only makes the call (no
    imports or loading between fork and exec)."""
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    sigterm = int(signal.SIGTERM)

    def arm() -> None:
        prctl(1, sigterm, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return arm


def run_tunnel(argv: list[str], *, host: str, hint: str) -> None:
    """Run an `ssh -N -L` tunnel in the foreground until it closes or we are stopped.

    Ctrl+C closes it (exit 0: the usual way out); SIGTERM/SIGHUP (errors.Interrupted)
    close it and exit 130. Either way the ssh child is stopped and waited for before
    this returns: it never outlives the command, not even a SIGKILLed one (the kernel
    then stops it: _die_with).
    """
    import subprocess

    from gpumod.errors import Interrupted, TransportError

    proc = subprocess.Popen(argv, preexec_fn=_die_with(os.getpid()))
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
