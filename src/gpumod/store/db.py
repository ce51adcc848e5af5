"""Connection handling: WAL, foreign keys, busy timeout, immediate transactions.

Every SQLite failure leaves here as a typed error naming the file (store/faults.py),
and a command that meets another's write lock says so while it waits.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

from gpumod import paths
from gpumod.errors import ConfigError
from gpumod.store import faults, settings
from gpumod.store.migrations import MIGRATIONS

#: how long a command waits for another command's write lock before giving up (exit 4)
LOCK_WAIT_SECONDS = 30.0
#: SQLite's own busy wait per try; between tries the wait is announced once
_BUSY_SLICE_MS = 1000


class _Cursor(sqlite3.Cursor):
    """A cursor whose SQLite errors come out typed (a read can find damage too)."""

    path: Path

    def execute(self, sql: str, params: Any = ()) -> _Cursor:
        with _typed(self.path):
            return super().execute(sql, params)

    def executemany(self, sql: str, params: Any) -> _Cursor:
        with _typed(self.path):
            return super().executemany(sql, params)

    def fetchone(self) -> Any:
        with _typed(self.path):
            return super().fetchone()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        with _typed(self.path):
            return super().fetchmany(size if size is not None else self.arraysize)

    def fetchall(self) -> list[Any]:
        with _typed(self.path):
            return super().fetchall()

    def __next__(self) -> Any:
        with _typed(self.path):
            return super().__next__()


_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)


class _Connection(sqlite3.Connection):
    """Statements through typed cursors; a statement that may wait for another command's
    write lock (outside a transaction, or the BEGIN/COMMIT of one) waits up to
    LOCK_WAIT_SECONDS and says so on stderr."""

    path: Path

    @overload
    def cursor(self, factory: None = None) -> _Cursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _CursorT]) -> _CursorT: ...

    def cursor(self, factory: Callable[[sqlite3.Connection], Any] | None = None) -> Any:
        cursor = super().cursor(factory or _Cursor)
        cursor.path = self.path
        return cursor

    def execute(self, sql: str, params: Any = ()) -> _Cursor:
        began = time.monotonic()
        waiting = False
        while True:
            cursor = self.cursor()
            try:
                sqlite3.Cursor.execute(cursor, sql, params)  # untyped: a lock comes back raw
                return cursor
            except sqlite3.Error as exc:
                waited = time.monotonic() - began
                retryable = not self.in_transaction or sql.lstrip().upper().startswith(
                    ("BEGIN", "COMMIT"))
                if not faults.is_locked(exc) or not retryable or waited >= LOCK_WAIT_SECONDS:
                    _raise_typed(exc, self.path, waited)
            if not waiting:
                waiting = True
                _notice(f"waiting for the database lock held by {faults.lock_holder(self.path)}"
                        f" (up to {LOCK_WAIT_SECONDS:.0f} s)...")

    def executemany(self, sql: str, params: Any) -> _Cursor:
        return self.cursor().executemany(sql, params)

    def executescript(self, script: str) -> sqlite3.Cursor:
        cursor = self.cursor()
        with _typed(self.path):
            return cursor.executescript(script)


@contextlib.contextmanager
def _typed(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        _raise_typed(exc, path, _BUSY_SLICE_MS / 1000)


def _raise_typed(exc: sqlite3.Error, path: Path, waited: float) -> None:
    error = faults.translate(exc, path, waited=waited)
    if error is None:
        raise exc
    raise error from exc


def _notice(text: str) -> None:
    """Progress on stderr (stdout may be JSON); every front end shows it."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Store:
    """A thin wrapper over one SQLite connection.

    Reads run in autocommit mode; every write goes through ``transaction()``,
    which takes SQLite's write lock up front (BEGIN IMMEDIATE) so that two
    gpumod commands running at once serialise instead of interleaving.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            db = sqlite3.connect(path, timeout=_BUSY_SLICE_MS / 1000, isolation_level=None,
                                 factory=_Connection)
        except sqlite3.Error as exc:
            raise faults.translate(exc, path) or exc from exc
        assert isinstance(db, _Connection)
        db.path = path
        self.db = db
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute(f"PRAGMA busy_timeout = {_BUSY_SLICE_MS}")
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - e.g. some network filesystems
            raise ConfigError(f"SQLite could not switch {path} to WAL (got {mode})")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    # -- schema ---------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply the missing migrations, each in its own transaction with its version bump:
        a failing one leaves the earlier ones applied and the version naming the last."""
        while (version := self.schema_version()) != len(MIGRATIONS):
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"{self.path} was written by a newer gpumod (schema "
                    f"{version}, this one knows {len(MIGRATIONS)})",
                    hint="upgrade gpumod",
                )
            with self.transaction():
                # Re-read inside the lock: another process may have migrated meanwhile.
                number = self.schema_version()
                if number < len(MIGRATIONS):
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

    # The settings and events tables (store/settings.py), at hand on every store.
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        return settings.get(self, key, default)

    def set_setting(self, key: str, value: str) -> None:
        settings.put(self, key, value)

    def delete_setting(self, key: str) -> None:
        settings.delete(self, key)

    def log_event(self, action: str, *, host: str | None = None, service: str | None = None,
                  detail: str = "") -> None:
        settings.log_event(self, action, host=host, service=service, detail=detail)

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
        try:
            paths.ensure_home()
        except OSError as exc:
            raise ConfigError(f"cannot create gpumod's folder {paths.home()}: {exc.strerror}",
                              hint="set GPUMOD_HOME to a folder you can write") from exc
        path = paths.database_path()
    key = (path, threading.get_ident())
    store = _open.get(key)
    if store is None:
        store = _open[key] = Store(path)
    return store
