"""Connection handling: WAL, foreign keys, busy timeout, immediate transactions."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpumod import paths
from gpumod.errors import ConfigError
from gpumod.store.migrations import MIGRATIONS


class Store:
    """A thin wrapper over one SQLite connection.

    Reads run in autocommit mode; every write goes through ``transaction()``,
    which takes SQLite's write lock up front (BEGIN IMMEDIATE) so that two
    gpumod commands running at once serialise instead of interleaving.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:  # pragma: no cover - depends on filesystem
            raise ConfigError(f"cannot open the database {path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA busy_timeout = 30000")
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - e.g. some network filesystems
            raise ConfigError(f"SQLite could not switch {path} to WAL (got {mode})")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    # -- schema ---------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version() >= len(MIGRATIONS):
            if self.schema_version() > len(MIGRATIONS):
                raise ConfigError(
                    f"{self.path} was written by a newer gpumod (schema "
                    f"{self.schema_version()}, this one knows {len(MIGRATIONS)})",
                    hint="upgrade gpumod",
                )
            return
        with self.transaction():
            # Re-read inside the lock: another process may have migrated meanwhile.
            for number in range(self.schema_version(), len(MIGRATIONS)):
                MIGRATIONS[number](self.db)
                self.db.execute(f"PRAGMA user_version = {number + 1}")

    # -- transactions -----------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        if self.db.in_transaction:  # nested: join the outer transaction
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- small helpers -----------------------------------------------------
    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.db.execute(sql, params).fetchone()

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.query_one("SELECT value FROM settings WHERE key = ?", (key,))
        return row["value"] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def log_event(self, action: str, *, host: str | None = None, service: str | None = None,
                  detail: str = "") -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (host, service, action, detail) VALUES (?, ?, ?, ?)",
                (host, service, action, detail),
            )

    def close(self) -> None:
        self.db.close()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None, default: Any = None) -> Any:
    return default if text in (None, "") else json.loads(text)


_open: dict[tuple[Path, int], Store] = {}


def open_store(path: Path | None = None) -> Store:
    """The store for this process and thread (created, migrated, cached per path).

    An SQLite connection belongs to the thread that opened it, so each thread
    (MCP and TUI workers, parallel host queries) gets its own.
    """
    if path is None:
        paths.ensure_home()
        path = paths.database_path()
    key = (path, threading.get_ident())
    store = _open.get(key)
    if store is None:
        store = _open[key] = Store(path)
    return store
