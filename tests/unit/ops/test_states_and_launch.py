"""One state classification, one bind rule, one port allocation, systemd state checks,
planner admission in the one launch path, set_context."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gpumod.engines.registry import get_engine
from gpumod.errors import CapacityError, ConflictError, UsageError
from gpumod.hosts.model import Host
from gpumod.hosts.transports.local import LocalTransport
from gpumod.ops import addresses, admission, launch, lifecycle, probe, runtime, services
from gpumod.ops.probe import Probe
from gpumod.ops.states import classify, host_status, service_status
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from gpumod.supervise.systemd import SystemdSupervisor
from tests.support.real import free_port

LOCAL = Host("local", "local")
POD = Host("dc1", "ssh", ssh_command="ssh root@10.0.0.5", address="10.0.0.5",
           root="/root/.gpumod")


def spec(state: str = "running", **kw) -> ServiceSpec:
    base = dict(name="s", host="local", engine="vllm", model="o/m", port=8001, state=state)
    return ServiceSpec(**{**base, **kw})


@pytest.mark.parametrize("recorded, process, http, expected", [
    ("running", "alive", 200, "running"),
    ("starting", "alive", 0, "starting"),
    ("running", "alive", 500, "unhealthy"),
    ("sleeping", "alive", 200, "sleeping"),     # an asleep vLLM still answers /health
    ("sleeping", "dead", 0, "crashed"),
    ("running", "dead", 0, "crashed"),
    ("running", "gone", 0, "crashed"),
    ("running", "missing", 0, "crashed"),
    ("failed", "stopped", 0, "stopped"),
    ("failed", "gone", 0, "crashed"),
    ("running", "stopped", 0, "stopped"),      # stopped outside gpumod
    ("defined", "missing", 0, "stopped"),      # never started: not a crash
    ("stopped", "gone", 0, "stopped"),
    ("stopped", "alive", 200, "running"),      # started outside gpumod: it runs
    ("running", "unknown", 0, "unknown"),
])
def test_one_classification(recorded, process, http, expected):
    state, detail = classify(spec(recorded), Probe("/d", 42, process, http), get_engine("vllm"))
    assert state == expected and detail
    assert classify(spec(recorded), None, None)[0] == "unknown"


def test_llamacpp_loading_is_starting():
    assert classify(spec(engine="llamacpp"), Probe("/d", 1, "alive", 503),
                    get_engine("llamacpp"))[0] == "starting"


def test_one_bind_rule():
    assert addresses.bind_address(spec(), LOCAL) == "127.0.0.1"
    assert addresses.bind_address(spec(), POD) == "0.0.0.0"
    # vLLM with sleep (dev endpoints, no auth): loopback whatever was asked
    for s in (spec(sleep_mode="l1", extra={"bind": "0.0.0.0"}),
              spec(env={"VLLM_SERVER_DEV_MODE": "1"})):
        assert addresses.bind_address(s, POD) == "127.0.0.1"
    assert addresses.bind_address(spec(engine="llamacpp", sleep_mode="router"), POD) == "0.0.0.0"
    assert addresses.bind_address(spec(extra={"bind": "0.0.0.0"}), LOCAL) == "0.0.0.0"
    with pytest.raises(UsageError, match="invalid bind"):
        addresses.bind_address(spec(extra={"bind": "10.0.0.1;reboot"}), LOCAL)


def test_launch_plan_of_a_sleeping_vllm_on_a_pod_binds_loopback():
    plan = runtime.launch_plan(spec(sleep_mode="l2", extra={"bind": "0.0.0.0"}), POD)
    argv = list(plan.argv)
    assert argv.count("--host") == 1 and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert plan.env["VLLM_SERVER_DEV_MODE"] == "1" and "--enable-sleep-mode" in argv


def test_a_relaunched_pi_start_gguf_deployment_finds_its_file():
    """Wake-by-restart and the gateway relaunch without pi start's pre-flight options."""
    gguf = spec(engine="llamacpp", model="org/repo:tiny.gguf", args=("-c", "512"),
                extra={"model_path": "/cache/snapshots/abc/tiny.gguf"})
    argv = list(runtime.launch_plan(gguf, POD).argv)
    assert argv[argv.index("-m") + 1] == "/cache/snapshots/abc/tiny.gguf"


def test_service_add_takes_its_port_like_pi_start():
    store = open_store()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = lifecycle.add_service(store, spec("defined", name="a", port=0),
                                      listening={8001})
        assert (taken.port, taken.state) == (8002, "stopped")  # 8001 held by a program
        again = lifecycle.add_service(store, spec("defined", name="b", port=0))
        assert again.port == 8001
        with pytest.raises(ConflictError, match="port 8002 on local is already used by a"):
            lifecycle.add_service(store, spec("defined", name="c", port=8002))
        with pytest.raises(ConflictError, match="taken by another program"):
            lifecycle.add_service(store, spec("defined", name="c", port=8005),
                                  listening={8005})
        with pytest.raises(ConflictError, match="already exists"):
            lifecycle.add_service(store, spec("defined", name="a", port=0))
    assert [s.name for s in services.list_services(store)] == ["b", "a"]


def test_a_never_started_service_is_stopped_not_crashed():
    store = open_store()
    lifecycle.add_service(store, spec("defined", name="idle", port=0))
    status = service_status(store, "idle")
    assert (status.state, status.process, status.health) == ("stopped", "stopped", "-")


def test_set_context_replaces_the_flag():
    store = open_store()
    lifecycle.add_service(store, spec("defined", name="c", port=0,
                                      args=("--max-model-len=4096", "--enforce-eager")))
    done = lifecycle.set_context(store, "c", 32768)
    assert done.args == ("--enforce-eager", "--max-model-len", "32768")
    assert services.get_service(store, "c").args == done.args
    with pytest.raises(UsageError):
        lifecycle.set_context(store, "c", 0)


FAKE_SYSTEMCTL = r"""#!/bin/sh
[ "$1" = --user ] && shift
unit=$2
case $unit in
  gpumod-up.service)
    printf 'LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=%s\n' "$FAKE_PID" ;;
  gpumod-boom.service)
    printf 'LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\n' ;;
  gpumod-off.service) printf 'LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n' ;;
  *) printf 'LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n' ;;
esac
"""


def test_systemd_units_are_checked_in_the_same_round_trip(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PID", str(os.getpid()))
    items = [(str(tmp_path / n), 1, "/health", "127.0.0.1", "user", f"gpumod-{n}.service")
             for n in ("up", "boom", "off", "never")]
    found = probe.probe_host(LocalTransport(), items)
    got = {Path(k).name: (v.process, v.pid) for k, v in found.items()}
    assert got == {"up": ("alive", os.getpid()), "boom": ("dead", None),
                   "off": ("stopped", None), "never": ("missing", None)}
    store = open_store()
    for name, state in (("up", "running"), ("boom", "running"), ("never", "defined")):
        services.reserve(store, spec(state, name=name, supervisor="systemd"), LOCAL,
                         listening=set(), state=state, port=free_port())
    by_name = {s.spec.name: s for s in host_status(store, LOCAL, services.list_services(store))}
    assert by_name["up"].process == "running" and by_name["up"].state == "unhealthy"
    assert by_name["boom"].state == "crashed"
    assert by_name["never"].state == "stopped"


def test_supervisor_for_builds_the_real_systemd_supervisor():
    sup = runtime.supervisor_for(spec(supervisor="systemd", extra={"systemd_scope": "system"}),
                                LOCAL, LocalTransport())
    assert isinstance(sup, SystemdSupervisor)
    assert sup.scope == "system" and sup.options.engine == "vllm"
    assert sup.systemctl_argv("show", "x") == ["systemctl", "show", "x"]


@pytest.fixture
def fake_admission(monkeypatch):
    from gpumod.ops import sizing

    calls: list = []

    class Admission:
        def __init__(self, args, notes):
            self.args, self.notes, self.estimate = args, notes, {"kv": 1}

    def check_start(store, host, spec, usage, *, force):
        calls.append((host.name, spec.gpus, usage, force))
        if spec.name == "huge" and not force:
            raise CapacityError("huge does not fit", hint="try a smaller model")
        return Admission((*spec.args, "--gpu-memory-utilization", "0.42"), ["computed 0.42"])

    monkeypatch.setattr(sizing, "check_start", check_start)
    return calls


def test_admission_sets_the_launch_args_and_refuses_what_does_not_fit(fake_admission):
    store = open_store()
    rt = runtime.runtime(store, spec("defined", gpus=(0,)), secrets={})
    notes: list[str] = []
    admitted, estimate = admission.admit(store, rt, [], force=False, progress=notes.append)
    assert admitted.plan.argv[-2:] == ("--gpu-memory-utilization", "0.42")
    assert estimate == {"kv": 1} and notes == ["s: computed 0.42"]
    assert fake_admission == [("local", (0,), [], False)]
    huge = runtime.runtime(store, spec("defined", name="huge"), secrets={})
    with pytest.raises(CapacityError, match="does not fit"):
        admission.admit(store, huge, None, force=False, progress=notes.append)
    assert admission.admit(store, huge, None, force=True, progress=notes.append)[0].spec.args


def test_a_refused_pi_start_reservation_is_removed(fake_admission):
    store = open_store()
    reserved = services.reserve(store, spec("starting", name="huge"), LOCAL, listening=set())
    rt = runtime.runtime(store, reserved, secrets={})
    with pytest.raises(CapacityError):
        launch.launch(store, rt, timeout=5, new=True)
    assert services.list_services(store) == []
