"""The ``modes``, ``mode_services`` and ``host_state`` tables: modes and each host's current one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def get(store: Store, name: str) -> Mode | None:
    row = store.query_one("SELECT * FROM modes WHERE name = ?", (name,))
    if row is None:
        return None
    items = store.query("SELECT service, sleep_on_idle FROM mode_services WHERE mode = ? "
                        "ORDER BY position, service", (name,))
    return Mode(row["name"], row["host"], row["description"],
                tuple(r["service"] for r in items),
                tuple(r["service"] for r in items if r["sleep_on_idle"]))


def names(store: Store, host: str | None = None) -> list[str]:
    """Mode names of HOST (by name), or of every host (by host, then name)."""
    if host:
        rows = store.query("SELECT name FROM modes WHERE host = ? ORDER BY name", (host,))
    else:
        rows = store.query("SELECT name FROM modes ORDER BY host, name")
    return [r["name"] for r in rows]


def services_in_modes(store: Store, host: str) -> set[str]:
    """Every service some mode of HOST lists."""
    return {r["service"] for r in store.query(
        "SELECT ms.service FROM mode_services ms JOIN modes m ON m.name = ms.mode "
        "WHERE m.host = ?", (host,))}


def insert(store: Store, name: str, *, host: str, description: str, services: Sequence[str],
           sleep_on_idle: Sequence[str]) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO modes (name, host, description) VALUES (?, ?, ?)",
                   (name, host, description))
        db.executemany("INSERT INTO mode_services (mode, service, position, sleep_on_idle) "
                       "VALUES (?, ?, ?, ?)",
                       [(name, s, i, int(s in sleep_on_idle)) for i, s in enumerate(services)])


def delete(store: Store, mode: Mode) -> None:
    """Forget MODE; its host has no current mode any more if it was this one."""
    with store.transaction() as db:
        db.execute("DELETE FROM modes WHERE name = ?", (mode.name,))
        db.execute("UPDATE host_state SET current_mode = NULL WHERE host = ? AND "
                   "current_mode = ?", (mode.host, mode.name))


def current(store: Store, host: str) -> str | None:
    row = store.query_one("SELECT current_mode FROM host_state WHERE host = ?", (host,))
    return row["current_mode"] if row else None


def set_current(store: Store, host: str, mode: str | None) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO host_state (host, current_mode) VALUES (?, ?) "
                   "ON CONFLICT(host) DO UPDATE SET current_mode = excluded.current_mode, "
                   "updated_at = datetime('now')", (host, mode))
