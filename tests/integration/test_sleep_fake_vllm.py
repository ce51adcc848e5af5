"""Sleep and wake through the fake vLLM: verified by /is_sleeping, nvidia-smi and a canary."""

from __future__ import annotations

import pytest

from gpumod.ops import lifecycle
from gpumod.ops.watch import Policy, Watcher, parse_metrics
from gpumod.store.db import open_store
from tests.support.cli import run_cli
from tests.support.real import free_port
from tests.support.services import fake_host, stop_all, vllm_spec


@pytest.fixture
def store(tmp_path, monkeypatch):
    fake_host(tmp_path, monkeypatch)
    st = open_store()
    yield st
    stop_all(st)


@pytest.mark.parametrize("level", ["1", "2"])
def test_sleep_and_wake_are_verified(store, level):
    lifecycle.add_service(store, vllm_spec("chat", free_port(), util="0.3", sleep=f"l{level}"))
    lifecycle.start_service(store, "chat")
    report = lifecycle.sleep(store, "chat", level)
    assert report.ok and report.result == f"asleep l{level}", report.summary()
    assert report.memory_before_mib > 5000 and report.memory_after_mib == 512  # CUDA context
    assert lifecycle.get_service(store, "chat").state == "sleeping"
    wake = lifecycle.wake(store, "chat")
    assert wake.ok and wake.result == "awake", wake.summary()
    assert wake.attempts[0].detail == "healthy, canary answered"
    assert wake.memory_after_mib == report.memory_before_mib
    log = (lifecycle.runtime(store, lifecycle.get_service(store, "chat")).plan.service_dir
           + "/service.log")
    from pathlib import Path

    text = Path(log).read_text()
    if level == "2":  # the level-2 wake reloads the weights and resets the prefix cache
        assert "Reloading weights inplace" in text and "reset prefix cache" in text


def test_fake_that_keeps_its_memory_is_detected_and_falls_back(store):
    lifecycle.add_service(store, vllm_spec("chat", free_port(), util="0.3", sleep="l2",
                                           env={"FAKE_VLLM_SLEEP_KEEPS_MEMORY": "1"}))
    lifecycle.start_service(store, "chat")
    report = lifecycle.sleep(store, "chat", "2")
    steps = [(a.step, a.ok) for a in report.attempts]
    assert steps == [("l2", False), ("l1", False), ("stop", True)], report.summary()
    assert "GPU memory did not drop" in report.attempts[0].detail
    assert report.result == "stopped" and report.ok
    assert not lifecycle.runtime(store, lifecycle.get_service(store, "chat")).alive()
    # wake now means start again, verified with the canary
    wake = lifecycle.wake(store, "chat")
    assert wake.ok and wake.result == "started"


def test_sleep_without_dev_mode_is_reported(store):
    """A vLLM that lacks the sleep endpoints: the failure is reported, exit non-zero."""
    lifecycle.add_service(store, vllm_spec("plain", free_port(), util="0.2"))
    lifecycle.start_service(store, "plain")
    code, out, err = run_cli("service", "sleep", "plain", prog="gpumod")  # no sleep: stop
    assert code == 0, err
    assert "plain: sleep stop -> stopped" in out
    code, _, err = run_cli("service", "sleep", "plain", prog="gpumod")
    assert code == 7
    assert "plain is not running" in err


def test_bad_level_is_a_usage_error(store):
    from gpumod.errors import UsageError

    lifecycle.add_service(store, vllm_spec("chat", free_port(), util="0.2", sleep="l1"))
    lifecycle.start_service(store, "chat")
    with pytest.raises(UsageError):
        lifecycle.sleep(store, "chat", "3")


def wait_dead(pid: int) -> None:
    """Until pid is gone or a zombie (what a killed process is once the kernel is done)."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still runs after SIGKILL")


def test_watch_restarts_a_crashed_service_and_sleeps_an_idle_one(store):
    import os
    import signal

    lifecycle.add_service(store, vllm_spec("chat", free_port(), util="0.2", sleep="l1"))
    lifecycle.add_service(store, vllm_spec("emb", free_port(), util="0.1"))
    with store.transaction() as db:
        db.execute("""UPDATE services SET spec = '{"idle_ttl": 5}' WHERE name = 'chat'""")
    lifecycle.start_service(store, "chat")
    lifecycle.start_service(store, "emb")
    old = lifecycle.get_service(store, "emb").pid
    os.kill(old, signal.SIGKILL)
    wait_dead(old)  # a crash, not a dying process: the status check is quicker than the kernel
    now = [0.0]
    lines: list[str] = []
    w = Watcher(store, "local", policy=Policy(fail_threshold=1, backoff_base=0),
                log=lines.append, clock=lambda: now[0])
    w.round()
    emb = lifecycle.get_service(store, "emb")
    assert emb.state == "running" and emb.pid != old
    assert any("emb: restarted" in line for line in lines), lines
    now[0] = 1.0
    w.round()
    assert lifecycle.get_service(store, "chat").state == "running"  # idle, but not for 5 s
    now[0] = 10.0
    w.round()
    assert lifecycle.get_service(store, "chat").state == "sleeping", lines
    actions = {r["action"] for r in store.query("SELECT action FROM events")}
    assert {"watch-crashed", "watch-restarted", "watch-idle-sleep"} <= actions


def test_parse_metrics_sums_label_sets():
    text = ('# HELP x\nvllm:num_requests_running{model="a"} 2.0\n'
            'vllm:num_requests_running{model="b"} 1.0\nvllm:generation_tokens_total 5\n')
    assert parse_metrics(text) == {"vllm:num_requests_running": 3.0,
                                   "vllm:generation_tokens_total": 5.0}
