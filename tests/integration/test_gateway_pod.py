"""`gpumod gateway start --pod`: the gateway runs ON a loopback SSH pod (real sshd).

gpumod's code is shipped there, the host's records are loaded into the pod's own store,
and the pod-side gateway starts and sleeps the pod's services through the same
lifecycle; the local records are reconciled by `gateway status` and `pi list`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from gpumod.hosts.model import GPU, Host
from gpumod.ops import hosts as hostops
from gpumod.ops import lifecycle
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state, write_state
from gpumod.testing.shims import install_shims
from tests.support.cli import run_cli
from tests.support.procs import group_members, spawn, wait_for
from tests.support.real import free_port
from tests.support.services import stop_all, vllm_spec

pytestmark = pytest.mark.sshd
KEY = "pod-gateway-key-0123456789abcdef"


@pytest.fixture
def pod(sshd, tmp_path, monkeypatch):
    state = tmp_path / "pod-gpus.json"
    write_state(state, ["rtx4090"])
    install_shims(sshd.bin_dir, gpu_state=state)
    monkeypatch.setenv("PI_API_KEY", KEY)
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "0.2")
    store = open_store()
    gpus = tuple(GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
                 for g in read_state(state)["gpus"])
    # the pod's engine Python: here the test's own (it has aiohttp and uvicorn, as vLLM's has)
    hostops.save_host(store, Host(name="dc1", kind="ssh", ssh_command=sshd.ssh_command,
                                  address="127.0.0.1", root=str(sshd.remote_root),
                                  engine_env={"python": sys.executable}, gpus=gpus),
                      replace=False)
    yield store
    run_cli("gateway", "stop", "--pod", "dc1")
    stop_all(store)


def ps_args() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_gateway_runs_on_the_pod_and_wakes_its_services(pod, sshd):
    store = pod
    lifecycle.add_service(store, vllm_spec("chat", free_port(), host="dc1", util="0.3",
                                           sleep="l1"))
    port = free_port()
    started = run_cli("gateway", "start", "--pod", "dc1", "--port", str(port), "-q")
    assert started.code == 0, started.output
    url = f"http://127.0.0.1:{port}/v1"
    assert url in started.stdout
    folder = sshd.remote_root / "gateway"
    assert (folder / "service.pid").exists()          # supervised on the pod
    lib = json.loads((folder / "manifest.json").read_text())["env"]["PYTHONPATH"]
    assert lib.startswith(str(folder / "lib")) and (folder / "lib").is_dir()
    assert f"from {lib}/gpumod" in (folder / "service.log").read_text()  # the shipped code
    # the key never lands in argv, logs or the files the gateway was given
    assert KEY not in ps_args()
    for name in ("config.json", "snapshot.json", "manifest.json", "service.log"):
        assert KEY not in (folder / name).read_text()
    assert oct((folder / "secrets.env").stat().st_mode & 0o777) == "0o600"

    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    reply = client.chat.completions.create(model="chat",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Echo: hi"   # started on the pod on request
    assert (sshd.remote_root / "services/chat/service.pid").exists()

    status = run_cli("gateway", "status", "--pod", "dc1", "--json")
    assert status.code == 0, status.output
    data = json.loads(status.stdout)
    assert data["state"] == "running" and data["url"] == url
    assert [(m["name"], m["state"]) for m in data["models"]] == [("chat", "ready")]
    # the local record learned it from the pod's gateway
    assert lifecycle.get_service(store, "chat").state == "running"
    listing = run_cli("list", "--pod", "dc1")
    assert f"gateway on dc1: {url}" in listing.output

    # and through an SSH tunnel, as for a pod without public ports
    local = free_port()
    tunnel = spawn("gpumod", "gateway", "tunnel", "--pod", "dc1", "--local-port", str(local))
    try:
        assert tunnel.stdout is not None
        assert tunnel.stdout.readline().strip() == \
            f"export OPENAI_BASE_URL=http://127.0.0.1:{local}/v1"
        via = openai.OpenAI(base_url=f"http://127.0.0.1:{local}/v1", api_key=KEY,
                            max_retries=3)
        deadline = time.monotonic() + 20
        while True:
            try:
                models = via.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert [m.id for m in models.data] == ["fake/chat"]
        tunnel.terminate()  # SIGTERM to the CLI alone: its ssh child goes with it
        assert tunnel.wait(timeout=15) == 130
        wait_for(lambda: not group_members(tunnel.pid), 5, "the ssh child to exit")
    finally:
        if group_members(tunnel.pid):
            os.killpg(tunnel.pid, signal.SIGKILL)
        tunnel.wait(timeout=10)

    stopped = run_cli("gateway", "stop", "--pod", "dc1")
    assert stopped.code == 0, stopped.output
    assert not (folder / "service.pid").exists()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert run_cli("gateway", "status", "--pod", "dc1").stdout.startswith(
        "gateway on dc1: not started")


def test_unreachable_pod_keeps_the_gateway_record(pod, sshd):
    port = free_port()
    assert run_cli("gateway", "start", "--pod", "dc1", "--port", str(port), "-q").code == 0
    from gpumod.ops.gateway import record

    sshd.stop()  # the pod goes away: nothing recorded may be lost
    try:
        status = run_cli("gateway", "status", "--pod", "dc1")
        assert status.code == 5 and "unreachable" in status.stdout
        stop = run_cli("gateway", "stop", "--pod", "dc1")
        assert stop.code == 5, stop.output
        assert record(pod, "dc1") is not None  # still known, so it can be stopped later
    finally:
        sshd.start()  # also when an assertion failed: the fixture stops the gateway then
    stopped = run_cli("gateway", "stop", "--pod", "dc1")
    assert stopped.code == 0, stopped.output
    assert record(pod, "dc1") is None
    assert not (sshd.remote_root / "gateway/service.pid").exists()


def test_the_pod_lost_while_its_gateway_starts_keeps_the_record_for_stop(pod, sshd):
    import threading

    from gpumod.ops.gateway import record

    pid_file = sshd.remote_root / "gateway/service.pid"

    def lose_the_pod_once_launched() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        sshd.stop()

    killer = threading.Thread(target=lose_the_pod_once_launched)
    killer.start()
    try:
        started = run_cli("gateway", "start", "--pod", "dc1", "--port", str(free_port()))
        killer.join()
        assert started.code == 5, started.output  # the host is unreachable
        assert record(pod, "dc1") is not None      # kept: the gateway may run there
        assert "gpumod gateway stop --pod dc1" in started.stderr
        status = run_cli("gateway", "status", "--pod", "dc1")
        assert status.code == 5 and "unreachable" in status.stdout
    finally:
        killer.join()
        sshd.start()
    stopped = run_cli("gateway", "stop", "--pod", "dc1")
    assert stopped.code == 0, stopped.output
    assert record(pod, "dc1") is None and not pid_file.exists()
    assert not [line for line in ps_args().splitlines()
                if "gpumod.gateway serve" in line and str(sshd.remote_root) in line]


def test_shipped_code_keeps_the_current_and_the_previous_version_only(pod, sshd):
    from gpumod.ops import gateway_remote as remote

    host = hostops.get_host(pod, "dc1")
    transport = hostops.transport_for(host)
    lib = sshd.remote_root / "gateway" / "lib"
    now = time.time()
    for age, name in ((300, "0" * 16), (200, "1" * 16), (100, "2" * 16)):
        (lib / name).mkdir(parents=True)
        marker = lib / name / ".complete"
        marker.touch()
        os.utime(marker, (now - age, now - age))
    abandoned = lib / f"{'3' * 16}.tmp.999"    # an unpack that died an hour ago
    abandoned.mkdir()
    os.utime(abandoned, (now - 3600, now - 3600))
    unpacking = lib / f"{'4' * 16}.tmp.1000"  # another unpack, running right now
    unpacking.mkdir()
    _, path = remote.ship_code(transport, host, str(sshd.remote_root / "gateway"))
    current = os.path.basename(path)
    assert (lib / current / "gpumod" / "gateway" / "server.py").is_file()
    assert sorted(p.name for p in lib.iterdir()) == sorted([current, "2" * 16, unpacking.name])
    # the same version again: nothing unpacked, nothing removed, marked as just used
    (lib / current / "gpumod" / "marker").write_text("kept")
    remote.ship_code(transport, host, str(sshd.remote_root / "gateway"))
    assert (lib / current / "gpumod" / "marker").read_text() == "kept"
    assert sorted(p.name for p in lib.iterdir()) == sorted([current, "2" * 16, unpacking.name])
