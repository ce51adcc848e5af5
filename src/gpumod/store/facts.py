"""The ``model_facts`` table: model facts fetched once (from the Hub or Ollama), kept as JSON."""

from __future__ import annotations

from typing import Any

from gpumod.store.db import Store, dumps, loads


def load_facts(store: Store, key: str) -> dict[str, Any] | None:
    """The cached facts of KEY as JSON, or None (also for an unreadable entry: it is refetched)."""
    row = store.query_one("SELECT facts FROM model_facts WHERE key = ?", (key,))
    if row is None:
        return None
    try:
        data = loads(row["facts"], None)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def save_facts(store: Store, key: str, facts: dict[str, Any]) -> None:
    with store.transaction() as db:
        db.execute(
            "INSERT INTO model_facts (key, facts) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
            "SET facts = excluded.facts, fetched_at = datetime('now')",
            (key, dumps(facts)))
