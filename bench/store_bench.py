"""Benchmark: what the typed store connection costs per statement.

Every statement goes through gpumod.store.db's Connection/Cursor subclasses (SQLite
errors come out typed; lock waits are announced). Baseline, in the same process: a
plain sqlite3 connection to the same file running the same statements.

Run:  .venv/bin/python bench/store_bench.py [--rounds 5] [--statements 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpumod.store.db import Store  # noqa: E402

QUERY = "SELECT name, host, engine, port FROM services WHERE host = ? ORDER BY name"


def timed(run, statements: int) -> float:
    began = time.perf_counter()
    for _ in range(statements):
        run()
    return (time.perf_counter() - began) / statements * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statements", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gpumod.db"
        store = Store(path)
        with store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO hosts (name, kind) VALUES ('local', 'local')")
        plain = sqlite3.connect(path, isolation_level=None)
        plain.row_factory = sqlite3.Row
        typed_us, plain_us = [], []
        for _ in range(args.rounds):
            typed_us.append(timed(lambda: store.db.execute(QUERY, ("local",)).fetchall(),
                                  args.statements))
            plain_us.append(timed(lambda: plain.execute(QUERY, ("local",)).fetchall(),
                                  args.statements))
        typed, base = statistics.median(typed_us), statistics.median(plain_us)
        print(f"plain sqlite3:   {base:7.1f} us per statement (median of {args.rounds})")
        print(f"gpumod store:    {typed:7.1f} us per statement")
        print(f"ratio:           {typed / base:7.2f}x  (+{typed - base:.1f} us per statement)")
        plain.close()
        store.close()


if __name__ == "__main__":
    main()
