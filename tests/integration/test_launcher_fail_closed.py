"""The launcher's two halves on real processes: nothing of the engine runs before it is
recorded, and nothing runs after a failed write (ProcessSupervisor through LocalTransport)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpumod.errors import ConflictError, EngineError
from gpumod.hosts.transports.local import LocalTransport
from gpumod.supervise import process
from gpumod.supervise.base import LaunchPlan
from gpumod.supervise.process import ProcessSupervisor
from tests.support.procs import alive, cwd_of

pytestmark = pytest.mark.spawns


def engine(tmp_path: Path, name: str = "svc") -> tuple[LaunchPlan, Path]:
    """An 'engine' that leaves a marker when it runs, then sleeps."""
    marker = tmp_path / f"{name}.ran"
    plan = LaunchPlan(name, ("sh", "-c", f'pwd > "{marker}"; exec sleep 60'), {},
                      service_dir=str(tmp_path / "services" / name))
    return plan, marker


def test_nothing_runs_before_release_and_the_pid_is_known_first(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    plan, marker = engine(tmp_path)
    held = sup.prepare(plan, {"API_KEY": "sk-held"})
    try:
        assert held and alive(held)
        time.sleep(0.5)
        assert not marker.exists(), "the engine ran before it was released"
        assert int(Path(plan.pid_path).read_text()) == held
        assert sup.release(plan, held) == held
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists() and alive(held)
        # it runs in its own empty folder, not the one holding secrets.env
        assert Path(marker.read_text().strip()) == Path(plan.run_dir)
        assert cwd_of(held) == plan.run_dir and os.listdir(plan.run_dir) == []
    finally:
        sup.remove(plan, timeout=2)
    assert not alive(held)


def test_a_failed_record_before_run_means_the_engine_never_runs(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    plan, marker = engine(tmp_path)
    seen: list[int | None] = []

    def record(pid: int | None) -> None:
        seen.append(pid)
        raise ConflictError("the store refused the record")

    with pytest.raises(ConflictError):
        sup.start(plan, {}, before_run=record)
    assert seen and seen[0] is not None
    time.sleep(0.5)
    assert not alive(seen[0]) and not marker.exists()


def test_a_launcher_never_released_exits_without_running_the_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "HOLD_SECONDS", 1)
    sup = ProcessSupervisor(LocalTransport())
    plan, marker = engine(tmp_path)
    held = sup.prepare(plan, {})
    deadline = time.monotonic() + 10
    while alive(held) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(held) and not marker.exists()
    assert "never released" in Path(plan.log_path).read_text()
    with pytest.raises(EngineError, match="held launcher is gone"):
        sup.release(plan, held)
    assert not marker.exists()


def test_an_unwritable_pid_file_fails_the_prepare(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    plan, marker = engine(tmp_path)
    (Path(plan.service_dir) / "service.pid.tmp").mkdir(parents=True)
    with pytest.raises(EngineError, match="could not write its pid file") as exc:
        sup.prepare(plan, {"API_KEY": "sk-x"})
    assert "nothing of the engine was started" in (exc.value.hint or "")
    time.sleep(0.5)
    assert not marker.exists()


def test_a_failed_start_keeps_its_log_until_the_next_start(tmp_path):
    sup = ProcessSupervisor(LocalTransport())
    plan = LaunchPlan("bad", ("sh", "-c", "echo 'error: weights are broken'; exit 1"), {},
                      service_dir=str(tmp_path / "services" / "bad"))
    sup.start(plan, {})
    time.sleep(0.5)
    sup.remove(plan, timeout=2, keep_log=True)
    kept = Path(plan.kept_log_path)
    assert not Path(plan.service_dir).exists()
    assert "weights are broken" in kept.read_text()
    sup.prepare(plan, {})    # the next start of that name drops it
    assert not kept.exists()
    sup.remove(plan, timeout=2)
