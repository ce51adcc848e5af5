"""Shared CLI helpers: options every host command takes, output, the store."""

from __future__ import annotations

import json
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
