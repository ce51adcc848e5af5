"""Mode switches with the fake vLLM: local and on the loopback SSH pod, rollback, two at once."""

from __future__ import annotations

import pytest

from gpumod.errors import ConflictError, EngineError
from gpumod.ops import lifecycle, modes
from gpumod.store.db import open_store
from tests.support.cli import run_cli
from tests.support.real import free_port
from tests.support.services import fake_host, stop_all, vllm_spec

FAST = {"FAKE_VLLM_STARTUP_SECONDS": "0.2", "FAKE_VLLM_WEIGHTS_GIB": "0.5"}


@pytest.fixture
def local(tmp_path, monkeypatch):
    fake_host(tmp_path, monkeypatch)
    store = open_store()
    yield store
    stop_all(store)


def define(store, host="local", fail_chat=False):
    lifecycle.add_service(store, vllm_spec("emb", free_port(), host=host, util="0.1",
                                           sleep="l2", env=FAST))
    chat_env = {**FAST, **({"FAKE_VLLM_FAIL": "CUDA out of memory"} if fail_chat else {})}
    lifecycle.add_service(store, vllm_spec("chat", free_port(), host=host, util="0.3",
                                           sleep="l1", depends_on=("emb",), env=chat_env))
    lifecycle.add_service(store, vllm_spec("coder", free_port(), host=host, util="0.3", env=FAST))
    modes.create_mode(store, "rag", ["chat"], host=host)
    modes.create_mode(store, "code", ["coder"], host=host)


def running(store, host="local") -> set[str]:
    """Services whose process really runs (asked from the host, not the store)."""
    out = set()
    for spec in lifecycle.list_services(store, host):
        if lifecycle.runtime(store, spec).alive():
            out.add(spec.name)
    return out


def test_switch_starts_dependencies_first_and_records_mode(local):
    define(local)
    result = modes.switch_mode(local, "rag")
    assert result.ok and result.done == ["start emb", "start chat"]
    assert modes.current_mode(local, "local") == "rag"
    assert running(local) == {"emb", "chat"}
    result = modes.switch_mode(local, "code")
    assert result.done == ["stop chat", "stop emb", "start coder"]  # reverse dependency order
    assert running(local) == {"coder"}
    assert modes.current_mode(local, "local") == "code"


def test_dry_run_changes_nothing(local):
    define(local)
    result = modes.switch_mode(local, "rag", dry_run=True)
    assert result.plan.steps() == ["start emb", "start chat"]
    assert "fits" in result.plan.fit
    assert running(local) == set() and modes.current_mode(local, "local") is None


def test_failing_service_rolls_back_to_previous_mode(local):
    define(local, fail_chat=True)
    modes.switch_mode(local, "code")
    with pytest.raises(EngineError) as exc:
        modes.switch_mode(local, "rag")
    message = exc.value.message
    assert "switch to rag failed: chat" in message and "rolled back to code" in message
    assert "CUDA out of memory" in message  # the engine's own error line
    assert modes.current_mode(local, "local") == "code"
    assert running(local) == {"coder"}  # nothing of the target left running
    states = {s.name: s.state for s in lifecycle.list_services(local)}
    assert states["coder"] == "running" and states["emb"] == "stopped"
    actions = [r["action"] for r in local.query("SELECT action FROM events ORDER BY id")]
    assert "mode-switch-failed" in actions


def test_target_that_does_not_fit_is_refused_before_anything_changes(local):
    define(local)
    lifecycle.add_service(local, vllm_spec("huge", free_port(), util="0.95", env=FAST))
    modes.create_mode(local, "big", ["huge", "coder"], host="local")
    modes.switch_mode(local, "code")
    from gpumod.errors import CapacityError

    with pytest.raises(CapacityError, match="does not fit"):
        modes.switch_mode(local, "big")
    assert running(local) == {"coder"} and modes.current_mode(local, "local") == "code"


def test_two_switches_at_once_one_refused(local):
    """Two `gpumod mode switch` processes at once: one wins, the other refuses clearly."""
    import subprocess
    import sys
    import time

    define(local)
    with local.transaction() as db:  # make the rag switch outlast the 3 s lock wait
        db.execute("""UPDATE services SET env = '{"FAKE_VLLM_STARTUP_SECONDS": "6"}'
                      WHERE name = 'emb'""")
    argv = [sys.executable, "-c", "from gpumod.cli.main import main; main()", "mode", "switch"]
    procs = {}
    for name in ("rag", "code"):
        procs[name] = subprocess.Popen([*argv, name], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
    outcome = {name: (p.wait(120), p.stdout.read(), p.stderr.read())
               for name, p in procs.items()}
    assert outcome["rag"][0] == 0, outcome
    assert outcome["code"][0] == ConflictError.exit_code, outcome
    err = outcome["code"][2].strip().splitlines()
    assert err[0] == ("error: another gpumod operation is changing services on local "
                      f"(pid {procs['rag'].pid}: mode switch rag)")
    assert modes.current_mode(local, "local") == "rag"
    assert running(local) == {"emb", "chat"}


def test_a_second_switch_waits_for_a_short_first_one(local):
    """Within the wait, the second switch runs after the first instead of failing."""
    import subprocess
    import sys
    import time

    define(local)
    argv = [sys.executable, "-c", "from gpumod.cli.main import main; main()", "mode", "switch"]
    first = subprocess.Popen([*argv, "code"], stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.run([*argv, "rag"], capture_output=True, text=True, timeout=120)
    assert first.wait(60) == 0
    assert second.returncode == 0, second.stderr
    assert modes.current_mode(local, "local") == "rag"
    assert running(local) == {"emb", "chat"}


def test_cli_switch_exit_codes_and_status(local):
    define(local, fail_chat=True)
    code, _, err = run_cli("mode", "switch", "rag", prog="gpumod")
    assert code == EngineError.exit_code
    assert any(line.startswith("error: switch to rag failed")
               for line in err.strip().splitlines())
    assert run_cli("mode", "switch", "nope", prog="gpumod").code == 3
    code, out, err = run_cli("mode", "switch", "code", prog="gpumod")
    assert code == 0, err
    assert "now in mode code" in out
    code, out, err = run_cli("mode", "status", prog="gpumod")
    assert code == 0, err
    assert "coder: running, health ok" in out


@pytest.mark.sshd
def test_switch_on_loopback_ssh_pod_with_rollback(sshd, tmp_path):
    from gpumod.hosts.model import Host
    from gpumod.ops import hosts as hosts_ops
    from gpumod.testing import install_shims, write_state

    state = tmp_path / "pod-gpus.json"
    write_state(state, ["h100"])
    install_shims(sshd.bin_dir, gpu_state=state)
    store = open_store()
    hosts_ops.save_host(store, Host("dc1", "ssh", ssh_command=sshd.ssh_command,
                                    root=str(sshd.remote_root)), replace=False)
    try:
        define(store, host="dc1", fail_chat=True)
        assert modes.switch_mode(store, "code").ok
        assert running(store, "dc1") == {"coder"}
        with pytest.raises(EngineError, match="rolled back to code"):
            modes.switch_mode(store, "rag")
        assert running(store, "dc1") == {"coder"}
        assert modes.current_mode(store, "dc1") == "code"
        # the pod's own nvidia-smi shows only the coder's memory now
        from gpumod.hosts.gpus import snapshot

        snap = snapshot(hosts_ops.transport_for(hosts_ops.get_host(store, "dc1")))
        pids = {p.pid for p in snap.processes}
        coder = lifecycle.get_service(store, "coder")
        assert pids == {coder.pid}
    finally:
        stop_all(store)
