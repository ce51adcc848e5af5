"""Faults while a service starts, runs or stops, on real processes (issue 11).

Invariant checked throughout: no engine process outlives its record, and no record
claims an engine that is gone. Engines are the fake vLLM (real processes, a fake GPU)
and `python3 -m http.server` started by the command engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gpumod.ops import lifecycle, modes
from gpumod.testing.fake_nvidia_smi import gpu_memory, read_state
from tests.integration.test_deploy_local import KEY, MODEL, port_listening, processes_in
from tests.support.cli import run_cli
from tests.support.disk import full_tmpfs
from tests.support.procs import alive, cwd_of, group_members, pid_in, spawn, wait_for
from tests.support.real import free_port
from tests.support.services import stop_all, vllm_spec

SLOW_HTTP = ["--engine", "command", "--health-path", "/", "--vllm", "sh", "-c",
             'sleep 30; exec python3 -m http.server --bind 127.0.0.1 "$0"', "{port}"]


def listed() -> list[dict]:
    return json.loads(run_cli("list", "--json").stdout)


def engine_pid(home: Path, name: str) -> int | None:
    return pid_in(home / "services" / name / "service.pid")


# -- signals: TERM and HUP are handled like Ctrl+C (case 9) -----------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_during_pi_start_stops_the_engine_and_records_nothing(local_env, signum):
    proc = spawn("pi", "start", "srv", "--name", "sig", "-q", *SLOW_HTTP)
    pid = wait_for(lambda: engine_pid(local_env.home, "sig"), 60, "the engine", proc)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "start cancelled" in err and "Traceback" not in err
    assert not alive(pid), "the engine outlived its record"
    assert listed() == []
    assert not processes_in(local_env.home)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_service_start_leaves_it_stopped(local_env, signum):
    define = run_cli("service", "add", "web", "--engine", "command", "--model", "web",
                     "--supervisor", "process", "--args",
                     "sh -c 'sleep 30; exec python3 -m http.server --bind 127.0.0.1 \"$0\"' "
                     "{port}", prog="gpumod")
    assert define.code == 0, define.output
    proc = spawn("gpumod", "service", "start", "web")
    pid = wait_for(lambda: engine_pid(local_env.home, "web"), 60, "the engine", proc)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not alive(pid)
    (row,) = listed()
    assert (row["name"], row["state"], row["recorded_state"], row["pid"]) == \
        ("web", "stopped", "stopped", None)


# -- a write failure while launching (case 2) -------------------------------------------


def test_unwritable_pid_file_fails_closed(local_env):
    folder = local_env.home / "services" / "pidtmp"
    (folder / "service.pid.tmp").mkdir(parents=True)
    result = run_cli("start", MODEL, "--name", "pidtmp", "-q")
    assert result.code == 7, result.output
    assert "could not launch pidtmp" in result.stderr
    time.sleep(1.0)  # an engine exec'd anyway would be up by now
    assert not processes_in(local_env.home), "the engine ran after a failed write"
    assert listed() == []


@pytest.fixture
def full_services(local_env):
    """$GPUMOD_HOME/services on a 64 KiB tmpfs filled to the last byte."""
    with full_tmpfs(local_env.home / "services") as services:
        yield services


def test_full_disk_never_runs_the_engine_without_its_key(local_env, full_services):
    result = run_cli("start", MODEL, "--name", "full", "-q")
    assert result.code == 7, result.output
    assert "could not launch full" in result.stderr
    assert "No space left" in result.stderr or "cannot write" in result.stderr
    time.sleep(1.0)
    assert not processes_in(local_env.home), "the engine ran after a failed write"
    assert listed() == []
    assert not (full_services / "full").exists()


# -- memory admission under concurrency (case 4) ----------------------------------------


def _seed_facts(store, key: str) -> None:
    from gpumod.ops.facts import remember as save_cached
    from gpumod.planner.facts import facts_from_config

    config = Path(__file__).parents[1] / "fixtures/planner/configs/Qwen__Qwen2.5-7B-Instruct.json"
    save_cached(store, facts_from_config(json.loads(config.read_text()), key=key))


def one_gpu(local_env) -> None:
    from gpumod.hosts.model import GPU
    from gpumod.ops import hosts as hostops
    from gpumod.testing.fake_nvidia_smi import write_state

    write_state(local_env.state, ["h100"])
    gpus = [GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
            for g in read_state(local_env.state)["gpus"]]
    hostops.update_local(local_env.store, gpus, {"nvidia_smi": True}, {})


def test_concurrent_starts_never_overcommit_a_gpu(local_env, monkeypatch):
    one_gpu(local_env)
    _seed_facts(local_env.store, MODEL)
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "2")
    procs = [spawn("pi", "start", MODEL, "--name", f"m{i}", "--memory", "45%", "-q")
             for i in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 0, 8], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 8)
    assert "GiB free" in refused
    (gpu,) = gpu_memory(read_state(local_env.state))
    assert gpu["used_mib"] <= gpu["memory_total_mib"], gpu
    assert sorted(r["state"] for r in listed()) == ["running", "running"]


def test_concurrent_service_starts_count_reserved_memory(local_env, monkeypatch):
    """Engines that do not profile memory start side by side; what one was admitted
    is counted for the next before its process holds it (reservations)."""
    one_gpu(local_env)
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "4")
    for name in ("r1", "r2"):
        added = run_cli("service", "add", name, "--engine", "command", "--model", name,
                        "--supervisor", "process", "--gpus", "0", "--vram-mib", "50000",
                        "--args", "vllm serve fake/x --host {host} --port {port} "
                        "--gpu-memory-utilization 0.6", prog="gpumod")
        assert added.code == 0, added.output
    procs = [spawn("gpumod", "service", "start", name) for name in ("r1", "r2")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 8], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 8)
    assert "reserved" in refused, refused
    (gpu,) = gpu_memory(read_state(local_env.state))
    assert gpu["used_mib"] <= gpu["memory_total_mib"], gpu


# -- the status probe checks who answers on the port (case 7) ---------------------------


def test_another_program_on_the_port_is_not_taken_for_the_service(local_env, tmp_path):
    started = run_cli("start", "srv", "--name", "own", "-q", "--engine", "command",
                      "--health-path", "/", "--vllm", "sh", "-c",
                      'python3 -m http.server --bind 127.0.0.1 "$0" & exec sleep 600',
                      "{port}")
    assert started.code == 0, started.output
    (row,) = listed()
    assert (row["state"], row["health"]) == ("running", "ok")
    port, leader = row["port"], engine_pid(local_env.home, "own")
    server = [p for p in group_members(leader) if p != leader and
              b"http.server" in Path(f"/proc/{p}/cmdline").read_bytes()]
    for pid in server:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not port_listening(port), 10, "the port to close")
    intruder = subprocess.Popen(["python3", "-m", "http.server", "--bind", "127.0.0.1",
                                 str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_listening(port), 10, "the intruder to listen")
        (row,) = listed()
        assert row["state"] == "unhealthy" and row["process"] == "running", row
        assert "another program" in row["detail"]
        status = run_cli("service", "status", "own", prog="gpumod")
        assert "health ok" not in status.stdout and "another program" in status.stdout
    finally:
        intruder.kill()
        intruder.wait()


# -- engines do not run in the folder that holds their secrets --------------------------


def test_a_file_server_engine_cannot_serve_the_secrets(local_env):
    result = run_cli("start", "srv", "--name", "files", "-q", "--engine", "command",
                     "--health-path", "/", "--vllm", "python3", "-m", "http.server",
                     "--bind", "127.0.0.1", "{port}")
    assert result.code == 0, result.output
    (row,) = listed()
    pid = engine_pid(local_env.home, "files")
    folder = local_env.home / "services" / "files"
    assert (folder / "secrets.env").exists()
    assert Path(cwd_of(pid)) != folder
    for name in ("secrets.env", "service.env", "manifest.json", "service.log"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{row['port']}/{name}") as answer:
                body = answer.read().decode()
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            continue
        raise AssertionError(f"{name} was served: {body[:80]}")


# -- an engine whose main process died while its children serve on ---------------------

# The launched process starts the server in its own process group, then exits: like a
# vLLM whose API process died while its engine-core children still hold the GPU.
ORPHANING = ["--engine", "command", "--health-path", "/", "--vllm", "sh", "-c",
             'python3 -m http.server --bind 127.0.0.1 "$0" >/dev/null 2>&1 & sleep 4; exit 0',
             "{port}"]


def test_children_of_a_dead_main_process_are_stopped_with_their_record(local_env):
    result = run_cli("start", "srv", "--name", "orphan", "-q", *ORPHANING)
    assert result.code == 0, result.output
    (row,) = listed()
    leader = int((local_env.home / "services/orphan/service.pid").read_text())
    wait_for(lambda: not alive(leader), 30, "the main process to exit")
    children = group_members(leader)
    assert children and port_listening(row["port"]), "the server child should still serve"
    (row,) = listed()
    assert row["state"] not in ("crashed", "stopped"), row  # its processes still run
    stopped = run_cli("stop", "orphan")
    assert stopped.code == 0, stopped.output
    assert not any(alive(pid) for pid in children), "a child outlived its record"
    assert not port_listening(row["port"])
    assert listed() == []


# -- the log of a failed start is still there (case 12) ---------------------------------


def test_failed_start_names_a_log_that_exists(local_env, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "CUDA out of memory. Tried to allocate 20.00 GiB")
    result = run_cli("start", MODEL, "--name", "boom", "-q")
    assert result.code == 7
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint:"))
    path = Path(hint.split("log: ", 1)[1].split()[0].rstrip(";"))
    assert path.is_file(), hint
    assert "CUDA out of memory" in path.read_text()
    assert KEY not in path.read_text()
    assert listed() == [] and not processes_in(local_env.home)
    monkeypatch.delenv("FAKE_VLLM_FAIL")
    again = run_cli("start", MODEL, "--name", "boom", "-q")
    assert again.code == 0, again.output
    assert not path.exists()  # kept only until the next start of that name


# -- mode switches (cases 8 and 13) ----------------------------------------------------


FAST = {"FAKE_VLLM_STARTUP_SECONDS": "0.2", "FAKE_VLLM_WEIGHTS_GIB": "0.5"}


@pytest.fixture
def moded(local_env):
    store = local_env.store
    lifecycle.add_service(store, vllm_spec("emb", free_port(), util="0.1", env=FAST))
    lifecycle.add_service(store, vllm_spec("chat", free_port(), util="0.3",
                                           depends_on=("emb",), env=FAST))
    lifecycle.add_service(store, vllm_spec("coder", free_port(), util="0.3", env=FAST))
    modes.create_mode(store, "rag", ["chat"], host="local")
    modes.create_mode(store, "code", ["coder"], host="local")
    yield store
    stop_all(store)


def test_switch_to_the_current_mode_restarts_a_crashed_member(moded):
    assert modes.switch_mode(moded, "code").ok
    pid = lifecycle.get_service(moded, "coder").pid
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the crash")
    code, out, err = run_cli("mode", "switch", "code")
    assert code == 0, err
    assert "start coder" in out and "nothing to change" not in out
    spec = lifecycle.get_service(moded, "coder")
    assert spec.state == "running" and spec.pid != pid and alive(spec.pid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_a_switch_rolls_back_and_exits_130(moded, local_env, signum):
    with moded.transaction() as db:
        db.execute("""UPDATE services SET env = '{"FAKE_VLLM_STARTUP_SECONDS": "30"}'
                      WHERE name = 'emb'""")
    assert modes.switch_mode(moded, "code").ok
    proc = spawn("gpumod", "mode", "switch", "rag")
    pid = wait_for(lambda: engine_pid(local_env.home, "emb"), 60, "emb's engine", proc)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cancelled; rolled back to code" in err
    assert not alive(pid)
    assert modes.current_mode(moded, "local") == "code"
    states = {s.name: s.state for s in lifecycle.list_services(moded)}
    assert states == {"emb": "stopped", "chat": "stopped", "coder": "running"}, states
    assert alive(lifecycle.get_service(moded, "coder").pid)


# -- the lifecycle decides, callers cannot race ----------------------------------------


def test_two_ensure_ready_at_once_start_the_service_once(moded):
    """Two callers (a gateway's requests) at once: one start, the other joins it."""
    import threading

    from gpumod.store.db import Store

    with moded.transaction() as db:
        db.execute("""UPDATE services SET env = '{"FAKE_VLLM_STARTUP_SECONDS": "2"}'
                      WHERE name = 'coder'""")
    got: list = []

    def caller() -> None:
        try:
            got.append(lifecycle.ensure_ready(Store(moded.path), "coder", timeout=60))
        except Exception as exc:  # pragma: no cover - reported below
            got.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [g.state for g in got] == ["running", "running"], got
    assert len({g.pid for g in got}) == 1
    starts = moded.query("SELECT 1 FROM events WHERE action = 'started' AND service = 'coder'")
    assert len(starts) == 1


def test_a_killed_pi_start_leaves_a_record_that_names_its_engine(local_env):
    """SIGKILL cannot be handled: the record written before the engine ran still names it."""
    proc = spawn("pi", "start", "srv", "--name", "k9", "-q", *SLOW_HTTP)
    pid = wait_for(lambda: engine_pid(local_env.home, "k9"), 60, "the engine", proc)
    wait_for(lambda: [r for r in listed() if r["pid"] == pid], 30, "the pid recorded", proc)
    time.sleep(0.5)  # released: sh runs `sleep 30` now
    proc.kill()
    proc.communicate(timeout=30)
    (row,) = listed()
    assert row["pid"] == pid and row["recorded_state"] == "starting", row
    assert row["state"] == "starting" and alive(pid)
    stopped = run_cli("stop", "k9")
    assert stopped.code == 0, stopped.output
    assert not alive(pid) and listed() == []
