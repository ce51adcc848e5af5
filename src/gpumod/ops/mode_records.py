"""Mode records: what the store says about modes, without the switch machinery.

`gpumod mode list` needs only these; gpumod.ops.modes (switches, with the lifecycle and
everything it imports) re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpumod.errors import NotFoundError
from gpumod.store.db import Store


@dataclass(frozen=True)
class Mode:
    name: str
    host: str
    description: str
    services: tuple[str, ...]
    sleep_on_idle: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "description": self.description,
                "services": list(self.services), "sleep_on_idle": list(self.sleep_on_idle)}


def get_mode(store: Store, name: str) -> Mode:
    row = store.query_one("SELECT * FROM modes WHERE name = ?", (name,))
    if row is None:
        known = [r["name"] for r in store.query("SELECT name FROM modes ORDER BY name")]
        raise NotFoundError(f"unknown mode {name!r}",
                            hint=f"known: {', '.join(known)}" if known else
                            "create one with `gpumod mode create NAME --services a,b`")
    items = store.query("SELECT service, sleep_on_idle FROM mode_services WHERE mode = ? "
                        "ORDER BY position", (name,))
    return Mode(row["name"], row["host"], row["description"],
                tuple(r["service"] for r in items),
                tuple(r["service"] for r in items if r["sleep_on_idle"]))


def list_modes(store: Store, host: str | None = None) -> list[Mode]:
    if host:
        rows = store.query("SELECT name FROM modes WHERE host = ? ORDER BY name", (host,))
    else:
        rows = store.query("SELECT name FROM modes ORDER BY host, name")
    return [get_mode(store, r["name"]) for r in rows]


def current_mode(store: Store, host: str) -> str | None:
    row = store.query_one("SELECT current_mode FROM host_state WHERE host = ?", (host,))
    return row["current_mode"] if row else None
