"""Numbered schema migrations, each a named function (applied in order).

The schema version lives in SQLite's ``user_version``. Each migration runs
in its own transaction together with the version bump, so a crash leaves the
database at the previous or the next version, never between.
Append new migrations to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def run_statements(db: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the caller's transaction.

    (sqlite3's executescript() would COMMIT first, breaking atomic migrations.)
    """
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:60]}")


def m001_initial(db: sqlite3.Connection) -> None:
    run_statements(db,
        """
        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        CREATE TABLE hosts (
            name          TEXT PRIMARY KEY,
            kind          TEXT NOT NULL CHECK (kind IN ('local', 'ssh')),
            ssh_command   TEXT,             -- as the user typed it
            ssh_argv      TEXT,             -- JSON list: parsed options + destination
            address       TEXT,             -- host name or IP reached by the user for endpoints
            port_map      TEXT NOT NULL DEFAULT '{}',  -- JSON {"8001": "host:port"}
            root          TEXT,             -- gpumod's folder on the host
            models_path   TEXT,
            mount_command TEXT,
            vllm_channel  TEXT,
            engine_env    TEXT NOT NULL DEFAULT '{}',  -- JSON: venv, PATH entries, versions
            capabilities  TEXT NOT NULL DEFAULT '{}',  -- JSON: systemd, docker, nvidia-smi
            created_at    TEXT NOT NULL DEFAULT (datetime('now')),
            updated_at    TEXT NOT NULL DEFAULT (datetime('now'))
        );

        CREATE TABLE gpus (
            host        TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
            idx         INTEGER NOT NULL,
            uuid        TEXT NOT NULL,
            name        TEXT NOT NULL,
            memory_mib  INTEGER NOT NULL,
            PRIMARY KEY (host, idx)
        );

        CREATE TABLE services (
            name          TEXT PRIMARY KEY,
            host          TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
            engine        TEXT NOT NULL,
            model         TEXT NOT NULL,
            port          INTEGER NOT NULL,
            gpus          TEXT NOT NULL DEFAULT '[]',  -- JSON list of GPU indexes
            args          TEXT NOT NULL DEFAULT '[]',  -- JSON list: engine args
            env           TEXT NOT NULL DEFAULT '{}',  -- JSON: non-secret env
            supervisor    TEXT NOT NULL DEFAULT 'process',
            sleep_mode    TEXT NOT NULL DEFAULT 'none',
            health_path   TEXT NOT NULL DEFAULT '/health',
            depends_on    TEXT NOT NULL DEFAULT '[]',
            vram_mib      INTEGER,                     -- planned budget per GPU
            spec          TEXT NOT NULL DEFAULT '{}',  -- JSON: everything else (preset, docker, ...)
            state         TEXT NOT NULL DEFAULT 'defined',
            pid           INTEGER,
            created_at    TEXT NOT NULL DEFAULT (datetime('now')),
            updated_at    TEXT NOT NULL DEFAULT (datetime('now')),
            UNIQUE (host, port)
        );

        CREATE TABLE modes (
            name        TEXT PRIMARY KEY,
            host        TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
            description TEXT NOT NULL DEFAULT '',
            created_at  TEXT NOT NULL DEFAULT (datetime('now'))
        );

        CREATE TABLE mode_services (
            mode          TEXT NOT NULL REFERENCES modes(name) ON DELETE CASCADE,
            service       TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
            position      INTEGER NOT NULL DEFAULT 0,
            sleep_on_idle INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (mode, service)
        );

        CREATE TABLE host_state (
            host          TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
            current_mode  TEXT,
            updated_at    TEXT NOT NULL DEFAULT (datetime('now'))
        );

        CREATE TABLE model_facts (
            key         TEXT PRIMARY KEY,   -- HF id or absolute path
            facts       TEXT NOT NULL,      -- JSON
            fetched_at  TEXT NOT NULL DEFAULT (datetime('now'))
        );

        CREATE TABLE calibrations (
            id             INTEGER PRIMARY KEY,
            model          TEXT NOT NULL,
            engine         TEXT NOT NULL,
            engine_version TEXT NOT NULL DEFAULT '',
            gpu_name       TEXT NOT NULL DEFAULT '',
            args_key       TEXT NOT NULL DEFAULT '',
            estimate       TEXT NOT NULL,   -- JSON
            actual         TEXT NOT NULL,   -- JSON
            created_at     TEXT NOT NULL DEFAULT (datetime('now'))
        );
        CREATE INDEX calibrations_setup
            ON calibrations (model, engine, engine_version, gpu_name, args_key);

        CREATE TABLE events (
            id       INTEGER PRIMARY KEY,
            ts       TEXT NOT NULL DEFAULT (datetime('now')),
            host     TEXT,
            service  TEXT,
            action   TEXT NOT NULL,
            detail   TEXT NOT NULL DEFAULT ''
        );

        INSERT INTO hosts (name, kind) VALUES ('local', 'local');
        INSERT INTO settings (key, value) VALUES ('active_host', 'local');
        """
    )


def m002_lifecycle(db: sqlite3.Connection) -> None:
    """The lifecycle's own columns on services.

    reserved_mib: GPU memory (MiB per GPU) admitted for a start whose engine does not
    hold it yet; counted by the next admission on the host, cleared once it is ready.
    note: why the service is in its recorded state (e.g. a stop that could not be
    confirmed), shown by `pi list`.
    """
    run_statements(db,
        """
        ALTER TABLE services ADD COLUMN reserved_mib INTEGER;
        ALTER TABLE services ADD COLUMN note TEXT NOT NULL DEFAULT '';
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_lifecycle,
]
