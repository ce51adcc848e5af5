"""The ``settings`` and ``events`` tables: key/value settings and the event log."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # store/db.py imports this module for Store's own methods
    from gpumod.store.db import Store


def get(store: Store, key: str, default: str | None = None) -> str | None:
    row = store.query_one("SELECT value FROM settings WHERE key = ?", (key,))
    return row["value"] if row else default


def put(store: Store, key: str, value: str) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def delete(store: Store, key: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM settings WHERE key = ?", (key,))


def log_event(store: Store, action: str, *, host: str | None = None,
              service: str | None = None, detail: str = "") -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO events (host, service, action, detail) VALUES (?, ?, ?, ?)",
                   (host, service, action, detail))
