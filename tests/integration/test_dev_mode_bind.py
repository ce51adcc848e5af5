"""VLLM_SERVER_DEV_MODE, read as vLLM reads it: any value vLLM takes as "on" binds loopback.

vLLM parses it with ``bool(int(value))`` (vllm/envs.py), so "2", "01", " 1" and "+1" all
open its unauthenticated dev endpoints; "true" or "" crash vLLM at start. gpumod used to
check ``== "1"`` only, so ``--env VLLM_SERVER_DEV_MODE=2`` bound a pod's service to 0.0.0.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumod.errors import UsageError
from tests.support.cli import run_cli
from tests.support.pods import MODEL, fake_pod

ON = ["1", "2", "01", " 1", "1 ", "+1", "-1", "1_0", "\u0661"]   # int() takes them, not 0
OFF = ["0", "00", " 0", "-0", "+0"]
CRASH = ["true", "", "yes", "on", "1.0", "0x1"]                   # int() raises


@pytest.mark.parametrize("value", ON)
def test_values_vllm_takes_as_on(value):
    from gpumod.engines.vllm import dev_mode_enabled

    assert bool(int(value)) is True  # what vLLM does
    assert dev_mode_enabled(value) is True


@pytest.mark.parametrize("value", OFF)
def test_values_vllm_takes_as_off(value):
    from gpumod.engines.vllm import dev_mode_enabled

    assert bool(int(value)) is False
    assert dev_mode_enabled(value) is False
    assert dev_mode_enabled(None) is False


@pytest.mark.parametrize("value", CRASH)
def test_values_vllm_crashes_on_are_refused_in_one_line(value):
    from gpumod.engines.vllm import check_dev_mode

    with pytest.raises(ValueError):
        int(value)
    with pytest.raises(UsageError) as err:
        check_dev_mode(value)
    assert "VLLM_SERVER_DEV_MODE" in err.value.message and "\n" not in err.value.message
    assert err.value.hint


def test_bind_rule_and_launch_plan_follow_vllms_parsing():
    from gpumod.hosts.model import Host
    from gpumod.ops import addresses, runtime
    from gpumod.spec import ServiceSpec

    pod = Host(name="dc1", kind="ssh", ssh_command="ssh root@h", root="/srv/gpumod")
    for value in ON:
        for engine, args in (("vllm", ()), ("command", ("srv", "--host", "{host}",
                                                        "--port", "{port}"))):
            spec = ServiceSpec("d", "dc1", engine, "m", 8000, args=args,
                               env={"VLLM_SERVER_DEV_MODE": value}, extra={"bind": "0.0.0.0"})
            assert addresses.bind_address(spec, pod) == "127.0.0.1", (engine, value)
            argv = list(runtime.launch_plan(spec, pod).argv)
            assert argv[argv.index("--host") + 1] == "127.0.0.1", (engine, value)
    off = ServiceSpec("d", "dc1", "vllm", "m", 8000, env={"VLLM_SERVER_DEV_MODE": "0"})
    assert addresses.bind_address(off, pod) == "0.0.0.0"
    # unset: pinned off, so a value in the pod's own environment cannot turn it on
    unset = ServiceSpec("d", "dc1", "vllm", "m", 8000)
    assert runtime.launch_plan(unset, pod).env["VLLM_SERVER_DEV_MODE"] == "0"
    bad = ServiceSpec("d", "dc1", "vllm", "m", 8000, env={"VLLM_SERVER_DEV_MODE": "true"})
    assert addresses.bind_address(bad, pod) == "127.0.0.1"  # listing an old record never fails
    with pytest.raises(UsageError, match="VLLM_SERVER_DEV_MODE"):
        runtime.launch_plan(bad, pod)


@pytest.mark.parametrize("value", CRASH[:2])
def test_service_add_refuses_a_value_vllm_would_crash_on(value):
    result = run_cli("service", "add", "d", "--engine", "vllm", "--model", MODEL,
                     "--env", f"VLLM_SERVER_DEV_MODE={value}", prog="gpumod")
    assert result.code == 2, result.output
    assert "VLLM_SERVER_DEV_MODE" in result.stderr and "internal error" not in result.output
    assert json.loads(run_cli("service", "list", "--json", prog="gpumod").stdout) == []


def test_fake_vllm_reads_dev_mode_like_vllm(tmp_path):
    """The shipped fake must be faithful: "2" opens the dev endpoints there too, and a
    value vLLM cannot parse stops it at start."""
    import httpx

    from gpumod.testing import fake_nvidia_smi as smi
    from gpumod.testing.harness import FakeVLLM

    state = smi.write_state(tmp_path / "gpus.json", ["h100"])
    on = FakeVLLM("org/tiny", (), env={"VLLM_SERVER_DEV_MODE": "2"}, gpu_state=state,
                  log_path=tmp_path / "on.log")
    try:
        on.wait_ready()
        assert httpx.get(on.base_url + "/is_sleeping").json() == {"is_sleeping": False}
    finally:
        on.stop(grace=2)
    bad = FakeVLLM("org/tiny", (), env={"VLLM_SERVER_DEV_MODE": "true"}, gpu_state=state,
                   log_path=tmp_path / "bad.log")
    try:
        assert bad.proc.wait(timeout=60) != 0
        assert "invalid literal for int()" in (tmp_path / "bad.log").read_text()
    finally:
        bad.stop(grace=2)


# ---------------------------------------------------------------------------- on a pod


@pytest.fixture
def pod(sshd, tmp_path, monkeypatch):
    with fake_pod(sshd, tmp_path, monkeypatch, gpus=["h100"],
                  stop=("gpumod", "service", "stop", "{name}")) as server:
        yield server


def listening_address(port: int) -> str:
    """'127.0.0.1' or '0.0.0.0' for a listening IPv4 port, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:
            return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return "not listening"


@pytest.mark.sshd
@pytest.mark.parametrize("value", ["2", "01"])
def test_dev_mode_on_a_pod_binds_loopback_whatever_the_value(pod, value):
    added = run_cli("service", "add", "d", "--pod", "dc1", "--engine", "vllm", "--model", MODEL,
                    "--env", f"VLLM_SERVER_DEV_MODE={value}", prog="gpumod")
    assert added.code == 0, added.output
    (row,) = json.loads(run_cli("service", "list", "--pod", "dc1", "--json",
                                prog="gpumod").stdout)
    started = run_cli("service", "start", "d", prog="gpumod")
    assert started.code == 0, started.output
    assert listening_address(row["port"]) == "127.0.0.1"
    manifest = json.loads((pod.remote_root / "services/d/manifest.json").read_text())
    assert manifest["argv"][manifest["argv"].index("--host") + 1] == "127.0.0.1"
