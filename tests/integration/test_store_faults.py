"""Store and OS faults end in one line naming the file or the limit, with the right exit code.

Each used to be "internal error, please report it" (exit 70), a write lock only after 30
silent seconds. Nothing here ever changes the user's file: a damaged database is left as
it is for them to move aside.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli


def gpumod(*args: str):
    return run_cli(*args, prog="gpumod")


def define_two() -> None:
    for name in ("a", "b"):
        assert gpumod("service", "add", name, "--engine", "vllm", "--model", "a/b").code == 0


def close_store() -> None:
    """Forget this process's cached connections (a new command opens the file again)."""
    from gpumod.store import db

    for store in db._open.values():
        store.close()
    db._open.clear()


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """Exit `code`; the last two stderr lines are `error: ...` (naming every fragment) and
    `hint: ...`; progress may come before them."""
    assert result.code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and \
        lines[-1].startswith("hint: "), result.stderr
    assert len([line for line in lines if line.startswith("error: ")]) == 1
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-2], lines[-2]


def test_garbage_database_is_named_and_left_alone(gpumod_home: Path):
    gpumod_home.mkdir(parents=True, exist_ok=True)
    db = gpumod_home / "gpumod.db"
    garbage = b"this is not SQLite " * 300
    db.write_bytes(garbage)
    result = gpumod("service", "list")
    assert_one_line_error(result, 2, str(db), "damaged or not gpumod's",
                          "file is not a database")
    assert "mv " in result.stderr  # the way out
    assert db.read_bytes() == garbage


def test_truncated_database_is_named(gpumod_home: Path):
    define_two()
    close_store()
    db = gpumod_home / "gpumod.db"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    os.truncate(db, db.stat().st_size // 2)
    kept = db.read_bytes()
    result = gpumod("service", "list")
    assert_one_line_error(result, 2, str(db), "damaged")
    assert db.read_bytes() == kept


def test_dropped_table_is_named(gpumod_home: Path):
    define_two()
    close_store()
    with sqlite3.connect(gpumod_home / "gpumod.db") as raw:
        raw.execute("DROP TABLE services")
    result = gpumod("service", "list")
    assert_one_line_error(result, 2, "gpumod.db", "no such table: services")


HOLDER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
""")


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_write_lock_held_too_long_says_who_holds_it_then_exit_4(gpumod_home, monkeypatch):
    from gpumod.store import db as store_db

    define_two()
    monkeypatch.setattr(store_db, "LOCK_WAIT_SECONDS", 2.0)
    holder = hold_write_lock(gpumod_home / "gpumod.db", 30)
    try:
        began = time.monotonic()
        result = gpumod("service", "add", "c", "--engine", "vllm", "--model", "a/b")
        waited = time.monotonic() - began
    finally:
        holder.kill()
        holder.wait()
    assert result.stderr.startswith("waiting for the database lock held by "
                                    f"pid {holder.pid} (python"), result.stderr
    assert_one_line_error(result, 4, "gpumod.db", f"is locked by pid {holder.pid}")
    assert 1.5 < waited < 15
    names = [s["name"] for s in json.loads(gpumod("service", "list", "--json").stdout)]
    assert names == ["a", "b"]


def test_a_short_write_lock_is_waited_for_with_progress(gpumod_home):
    define_two()
    holder = hold_write_lock(gpumod_home / "gpumod.db", 2.5)
    try:
        result = gpumod("service", "add", "c", "--engine", "vllm", "--model", "a/b")
    finally:
        holder.wait(timeout=30)
    assert result.code == 0, result.output
    assert "waiting for the database lock held by" in result.stderr
    names = [s["name"] for s in json.loads(gpumod("service", "list", "--json").stdout)]
    assert names == ["a", "b", "c"]


def test_reads_are_not_blocked_by_a_writer(gpumod_home):
    define_two()
    holder = hold_write_lock(gpumod_home / "gpumod.db", 30)
    try:
        threading.Event().wait(0.1)
        result = gpumod("service", "list", "--json")
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 0 and "waiting" not in result.stderr
    assert len(json.loads(result.stdout)) == 2


def test_config_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GPUMOD_HOME", str(blocker / "home"))
    result = gpumod("service", "list")
    assert_one_line_error(result, 2, str(blocker / "home"))


# ---------------------------------------------------------------------------- presets


def test_a_non_utf8_preset_is_reported_and_the_others_stay_usable(gpumod_home: Path):
    folder = gpumod_home / "presets" / "services"
    folder.mkdir(parents=True)
    bad = folder / "broken.yaml"
    bad.write_bytes(b"kind: service\nname: broken\ndescription: caf\xe9\n")
    (folder / "mine.yaml").write_text("kind: service\nname: mine\nengine: vllm\nmodel: my/m\n")
    listed = gpumod("preset", "list")
    assert listed.code == 0, listed.output
    assert "mine" in listed.stdout and "chat" in listed.stdout
    assert listed.stderr.strip() == (f"warning: skipped {bad}: not UTF-8 text (byte 0xe9 at "
                                     "offset 43)")
    as_json = gpumod("preset", "list", "--json")
    assert as_json.code == 0 and "broken" not in {p["name"] for p in json.loads(as_json.stdout)}
    assert gpumod("preset", "show", "chat").code == 0
    shown = gpumod("preset", "show", "broken")
    assert_one_line_error(shown, 2, str(bad), "not UTF-8")
    added = gpumod("service", "add", "m", "--preset", "mine")
    assert added.code == 0, added.output


# ---------------------------------------------------------------------------- limits


@pytest.mark.sshd
def test_two_100k_arguments_for_a_pod_are_refused_naming_the_limit(sshd, tmp_path,
                                                                    monkeypatch):
    from gpumod.store.db import open_store
    from gpumod.testing.fake_nvidia_smi import write_state
    from gpumod.testing.shims import install_shims
    from tests.support.pods import register_pod

    state = tmp_path / "pod-gpus.json"
    write_state(state, ["h100"])
    install_shims(sshd.bin_dir, gpu_state=state)
    monkeypatch.setenv("PI_API_KEY", "sk-test-0123456789")
    register_pod(open_store(), sshd, "dc1", state, tmp_path / "hf")
    big = ["--a=" + "x" * 100_000, "--b=" + "y" * 100_000]
    result = run_cli("start", "/srv/model", "--name", "big", "--pod", "dc1", "--engine",
                     "command", "--vllm", "python3", "-m", "http.server", "{port}", *big)
    assert_one_line_error(result, 2, "too long", "131,071 bytes")
    assert json.loads(run_cli("list", "--all-pods", "--json").stdout) == []


@pytest.mark.spawns
def test_concurrent_writers_serialise(tmp_path):
    """Eight processes each increment a counter 25 times: no lost update."""
    from gpumod.store import db as storedb

    path = tmp_path / "a.db"
    storedb.Store(path).set_setting("counter", "0")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from gpumod.store.db import Store
        s = Store(Path({str(path)!r}))
        for _ in range(25):
            with s.transaction() as d:
                v = int(d.execute("SELECT value FROM settings WHERE key='counter'").fetchone()[0])
                d.execute("UPDATE settings SET value=? WHERE key='counter'", (str(v + 1),))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(8)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert storedb.Store(path).get_setting("counter") == "200"
