"""Cleanups and helpers that cannot do their job say so instead of swallowing the cause."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumod.errors import Cancelled, HostUnreachableError
from gpumod.hosts.gpus import GPUUsage
from gpumod.hosts.model import GPU, Host
from gpumod.hosts.transports.mock import MockTransport
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store


def _setup_on(kill_answer):
    """A pod whose setup prints a step, then the user presses Ctrl+C; the kill script's
    answer is KILL_ANSWER (a result, or an error to raise)."""
    from gpumod.ops.pods import run_bootstrap

    def handler(argv, _input):
        if argv[0] == "setsid":
            return 0, "::step deps installing\n", ""
        if isinstance(kill_answer, Exception):
            raise kill_answer
        return kill_answer

    def on_event(_event):
        raise KeyboardInterrupt

    transport = MockTransport(handler)
    with pytest.raises(Cancelled) as info:
        run_bootstrap(transport, "/root/.gpumod", ["bash", "setup.sh"], on_event)
    assert transport.calls[-1][0][:2] == ("bash", "-c"), "the remote script is killed"
    return info.value


def test_a_cancelled_setup_says_the_remote_script_was_stopped() -> None:
    err = _setup_on((0, "", ""))
    assert "the remote script was stopped" in err.message


@pytest.mark.parametrize("answer", [HostUnreachableError("pod dc1: connection lost"),
                                    (1, "", "bash: kill: permission denied")])
def test_a_cancelled_setup_whose_script_could_not_be_stopped_says_so(answer) -> None:
    err = _setup_on(answer)
    assert "could not be stopped" in err.message
    assert "connection lost" in err.message or "permission denied" in err.message
    assert "/root/.gpumod/setup.pid" in (err.hint or "")


def test_a_planner_bug_while_choosing_gpus_is_reported_and_the_start_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from gpumod.ops import inventory, sizing

    def broken(*_a, **_k):
        raise RuntimeError("boom in the planner")

    monkeypatch.setattr(sizing, "service_facts", broken)
    store = Store(tmp_path / "db.sqlite")
    host = Host("local", "local", gpus=(GPU(0, "GPU-0", "H100", 81559),
                                        GPU(1, "GPU-1", "H100", 81559)))
    usage = [GPUUsage(host.gpus[0], 60000, 21559, "550"),
             GPUUsage(host.gpus[1], 1000, 80559, "550")]
    spec = ServiceSpec("chat", "local", "vllm", "Qwen/Qwen3-8B", 8001)
    assert inventory.choose_gpus(store, spec, host, usage) == (1,), "the freest GPU"
    event = store.query_one("SELECT action, service, detail FROM events")
    assert (event["action"], event["service"]) == ("gpu-choice-failed", "chat")
    assert "RuntimeError: boom in the planner" in event["detail"]
    assert "boom in the planner" in caplog.text
