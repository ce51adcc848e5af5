"""The ``calibrations`` table: an estimate next to what the engine reported after a start.

Rows are keyed by (model, engine, engine version, GPU label, setup key); see
``gpumod.planner.calibration`` for how the keys are made and how a row is used.
"""

from __future__ import annotations

from typing import Any

from gpumod.store.db import Store, dumps, loads


def record(store: Store, *, model: str, engine: str, engine_version: str = "",
           gpu_name: str = "", args_key: str = "", estimate: dict[str, Any],
           actual: dict[str, Any]) -> int:
    """Store one estimate-vs-actual pair; returns its id."""
    with store.transaction() as db:
        cur = db.execute(
            "INSERT INTO calibrations (model, engine, engine_version, gpu_name, args_key, "
            "estimate, actual) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, engine, engine_version or "", gpu_name or "", args_key or "",
             dumps(estimate), dumps(actual)))
        return int(cur.lastrowid or 0)


def for_setup(store: Store, *, model: str, engine: str, gpu_name: str, args_key: str,
              limit: int = 50) -> list[dict[str, Any]]:
    """The latest rows for this setup (any engine version), newest first."""
    rows = store.query(
        "SELECT * FROM calibrations WHERE model = ? AND engine = ? AND gpu_name = ? "
        "AND args_key = ? ORDER BY id DESC LIMIT ?",
        (model, engine, gpu_name or "", args_key or "", limit))
    return [_row(r) for r in rows]


def for_model(store: Store, model: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = store.query("SELECT * FROM calibrations WHERE model = ? ORDER BY id DESC LIMIT ?",
                       (model, limit))
    return [_row(r) for r in rows]


def _row(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "model": row["model"], "engine": row["engine"],
            "engine_version": row["engine_version"], "gpu_name": row["gpu_name"],
            "args_key": row["args_key"], "estimate": loads(row["estimate"], {}),
            "actual": loads(row["actual"], {}), "created_at": row["created_at"]}
