"""The SQLite store: migrations, WAL, transactions, constraints (concurrent writers:
tests/integration/test_store_faults.py)."""

from __future__ import annotations

import sqlite3

import pytest

from gpumod.store import db as storedb
from gpumod.store.migrations import MIGRATIONS


def test_fresh_store_is_migrated_and_has_local(tmp_path):
    s = storedb.Store(tmp_path / "a.db")
    assert s.schema_version() == len(MIGRATIONS)
    assert s.query_one("SELECT kind FROM hosts WHERE name='local'")["kind"] == "local"
    assert s.get_setting("active_host") == "local"
    assert s.query_one("PRAGMA journal_mode")[0] == "wal"
    assert s.query_one("PRAGMA foreign_keys")[0] == 1


def test_reopening_does_not_migrate_twice(tmp_path):
    storedb.Store(tmp_path / "a.db").set_setting("x", "1")
    again = storedb.Store(tmp_path / "a.db")
    assert again.get_setting("x") == "1"
    assert again.query_one("SELECT COUNT(*) FROM hosts")[0] == 1


def test_newer_schema_is_refused(tmp_path):
    from gpumod.errors import ConfigError

    path = tmp_path / "a.db"
    storedb.Store(path).db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(ConfigError, match="newer gpumod"):
        storedb.Store(path)


def test_failed_transaction_leaves_nothing_behind(tmp_path):
    s = storedb.Store(tmp_path / "a.db")
    with pytest.raises(RuntimeError), s.transaction() as d:
        d.execute("INSERT INTO settings (key, value) VALUES ('half', 'written')")
        raise RuntimeError("crash in the middle")
    assert s.get_setting("half") is None


def test_migration_failure_rolls_back_whole_migration(tmp_path, monkeypatch):
    def broken(conn):
        conn.execute("CREATE TABLE should_vanish (x)")
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr("gpumod.store.db.MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        storedb.Store(tmp_path / "a.db")
    monkeypatch.undo()
    s = storedb.Store(tmp_path / "a.db")
    assert s.schema_version() == len(MIGRATIONS)
    assert s.query_one("SELECT name FROM sqlite_master WHERE name='should_vanish'") is None


def test_a_failing_migration_keeps_the_earlier_ones_and_their_version(tmp_path, monkeypatch):
    """Each migration commits on its own: one that fails undoes only itself."""
    applied = []

    def third(conn):
        conn.execute("CREATE TABLE third_done (x)")
        applied.append("third")

    def fourth_broken(conn):
        conn.execute("CREATE TABLE should_vanish (x)")
        raise sqlite3.OperationalError("boom")

    path = tmp_path / "a.db"
    storedb.Store(path).close()  # at the shipped version
    monkeypatch.setattr("gpumod.store.db.MIGRATIONS", [*MIGRATIONS, third, fourth_broken])
    with pytest.raises(sqlite3.OperationalError, match="boom"):
        storedb.Store(path)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        raw.close()
    assert "third_done" in tables and "should_vanish" not in tables
    # fixed, the next open applies only what is missing
    monkeypatch.setattr("gpumod.store.db.MIGRATIONS", [*MIGRATIONS, third, lambda conn: None])
    again = storedb.Store(path)
    assert again.schema_version() == len(MIGRATIONS) + 2 and applied == ["third"]


def test_deleting_a_host_cascades_to_its_records(tmp_path):
    s = storedb.Store(tmp_path / "a.db")
    with s.transaction() as d:
        d.execute("INSERT INTO hosts (name, kind) VALUES ('p', 'ssh')")
        d.execute("INSERT INTO gpus (host, idx, uuid, name, memory_mib) VALUES ('p',0,'u','g',1)")
        d.execute("INSERT INTO services (name, host, engine, model, port) "
                  "VALUES ('s','p','vllm','m',8001)")
    with s.transaction() as d:
        d.execute("DELETE FROM hosts WHERE name='p'")
    assert s.query_one("SELECT COUNT(*) FROM services")[0] == 0
    assert s.query_one("SELECT COUNT(*) FROM gpus")[0] == 0


def test_port_is_unique_per_host(tmp_path):
    s = storedb.Store(tmp_path / "a.db")
    with s.transaction() as d:
        d.execute("INSERT INTO services (name, host, engine, model, port) "
                  "VALUES ('a','local','vllm','m',8001)")
    with pytest.raises(sqlite3.IntegrityError), s.transaction() as d:
        d.execute("INSERT INTO services (name, host, engine, model, port) "
                  "VALUES ('b','local','vllm','m',8001)")


def test_home_resolution(monkeypatch, tmp_path):
    from gpumod import paths

    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "g"))
    monkeypatch.setenv("PI_CONFIG_DIR", str(tmp_path / "p"))
    assert paths.home() == tmp_path / "g"
    monkeypatch.delenv("GPUMOD_HOME")
    assert paths.home() == tmp_path / "p"
    monkeypatch.delenv("PI_CONFIG_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert paths.home() == tmp_path / "h" / ".gpumod"
