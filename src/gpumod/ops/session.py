"""The store a front end works with: one per process and thread, or one per call.

Front ends never open SQLite themselves: the CLI takes `open_store()` (cached for
the command), the MCP server and the TUI run each operation in a worker thread
with `session_store()` (an SQLite connection belongs to its thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gpumod.store.db import Store
from gpumod.store.db import open_store as _open_store


def open_store() -> Store:
    """The store of this process and thread (created and migrated on first use)."""
    return _open_store()


@contextmanager
def session_store() -> Iterator[Store]:
    """A store connection for this call (and this thread), closed afterwards."""
    from gpumod import paths

    paths.ensure_home()
    store = Store(paths.database_path())
    try:
        yield store
    finally:
        store.close()
