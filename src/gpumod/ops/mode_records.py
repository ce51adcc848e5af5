"""Reading modes: the records (store/modes.py) without the switch machinery.

`gpumod mode list` needs only these; gpumod.ops.modes (switches, with the lifecycle and
everything it imports) re-exports them.
"""

from __future__ import annotations

from gpumod.errors import NotFoundError
from gpumod.store import modes as table
from gpumod.store.db import Store
from gpumod.store.modes import Mode


def get_mode(store: Store, name: str) -> Mode:
    mode = table.get(store, name)
    if mode is None:
        known = table.names(store)
        raise NotFoundError(f"unknown mode {name!r}",
                            hint=f"known: {', '.join(known)}" if known else
                            "create one with `gpumod mode create NAME --services a,b`")
    return mode


def list_modes(store: Store, host: str | None = None) -> list[Mode]:
    return [get_mode(store, name) for name in table.names(store, host)]


def current_mode(store: Store, host: str) -> str | None:
    return table.current(store, host)
