"""SQLite store: the local registry of hosts, services, modes and model facts."""

from gpumod.store.db import Store, open_store

__all__ = ["Store", "open_store"]
