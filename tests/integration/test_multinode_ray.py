"""One model across two loopback pods on a real Ray cluster (CPU, GPUs declared).

Two real sshd "pods" on 127.0.0.2 and 127.0.0.3, each with two fake H100s, the fake vLLM
and the real Ray CLI on its PATH. `pi start --pods` starts a real Ray head and worker
(each in its own temp dir and process group) and the fake vLLM on the head joins the
cluster as vLLM does: one placement group of tp x pp GPU bundles, one worker actor per
GPU on whichever node Ray placed it. Ray is heavy on two cores: few tests, long timeouts,
and every Ray process this module starts is killed in teardown (found by the marker
gpumod puts in their environment, so another session's Ray is never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from gpumod.hosts.model import GPU, Host
from gpumod.ops import hosts as hostops
from gpumod.ops.facts import remember
from gpumod.planner.facts import facts_from_config
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import read_state, write_state
from gpumod.testing.harness import FakeVLLM
from gpumod.testing.shims import install_shims
from tests.integration.test_deploy_local import KEY, fake_hf_cache, processes_in
from tests.support.cli import run_cli
from tests.support.real import free_port, require_real

pytestmark = [pytest.mark.sshd, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"   # the planner's facts come from the fixture config
CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "planner" / "configs"


def marked(name: str) -> list[int]:
    """Live processes carrying a Ray node marker of deployment `name` (any pod)."""
    needle = f"GPUMOD_RAY_NODE={name}@".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def environ(pid: int) -> bytes:
    """A process's environment ('' once it is gone: it may exit while we look)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def kill_marked(name: str, folder: Path | None = None) -> None:
    """SIGKILL the marked processes, and (given `folder`) any process working under it:
    Ray's renamed processes have their environment, marker included, written over."""
    pids = set(marked(name))
    if folder is not None:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and \
                        os.readlink(entry / "cwd").startswith(f"{folder}/"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gpu_used(state: Path) -> list[int]:
    from gpumod.testing.fake_nvidia_smi import gpu_memory

    return [int(g["used_mib"]) for g in gpu_memory(read_state(state))]


class Pods:
    def __init__(self, tmp_path: Path, sshds: list, states: list[Path], store) -> None:
        self.tmp_path, self.sshds, self.states, self.store = tmp_path, sshds, states, store
        self.name = f"mn-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def pods(tmp_path, monkeypatch):
    try:
        import ray  # noqa: F401
    except ImportError:
        require_real("Ray", "it is not installed (pip install 'gpumod[ray]')")
    from tests.support.sshd import LoopbackSSHD

    monkeypatch.setenv("PI_API_KEY", KEY)
    store = open_store()
    remember(store, facts_from_config(json.loads(
        (CONFIGS / "meta-llama__Llama-3.1-8B-Instruct.json").read_text()), key=MODEL))
    sshds, states = [], []
    for i, address in enumerate(("127.0.0.2", "127.0.0.3")):
        name = f"dc{i + 1}"
        sshd = LoopbackSSHD(tmp_path / name, address=address).start()
        sshds.append(sshd)
        state = tmp_path / f"{name}-gpus.json"
        write_state(state, ["h100", "h100"])
        states.append(state)
        install_shims(sshd.bin_dir, gpu_state=state, ray=True)
        (sshd.bin_dir / "vllm").write_text(  # quick "model loading" for the fake
            (sshd.bin_dir / "vllm").read_text().replace(
                "exec ", "FAKE_VLLM_STARTUP_SECONDS=0.2; export FAKE_VLLM_STARTUP_SECONDS\nexec ",
                1))
        hf_home = tmp_path / f"{name}-hf"
        fake_hf_cache(hf_home, MODEL)
        gpus = tuple(GPU(g["index"], g["uuid"], g["name"], g["memory_total_mib"])
                     for g in read_state(state)["gpus"])
        if name == "dc2":   # never read by setup: the start reads nvidia-smi there itself
            gpus = ()
        hostops.save_host(store, Host(name=name, kind="ssh", ssh_command=sshd.ssh_command,
                                      address=address, root=str(sshd.remote_root),
                                      engine_env={"hf_cache": str(hf_home)}, gpus=gpus),
                          replace=False)
    env = Pods(tmp_path, sshds, states, store)
    try:
        yield env
    finally:
        for sshd in sshds:
            if sshd.proc is None:
                sshd.start()
        for row in store.query("SELECT name FROM services"):
            run_cli("stop", row["name"], "--timeout", "2")
        kill_marked(env.name, tmp_path)
        from gpumod.ops.ray_nodes import temp_dir

        for host in hostops.list_hosts(store):  # Ray's temp dirs, even after a failed test
            if not host.is_local:
                shutil.rmtree(temp_dir(host, env.name), ignore_errors=True)
        for sshd in sshds:
            sshd.stop()


def chat(url: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=KEY, timeout=60)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello across pods"}])
    return reply.choices[0].message.content or ""


def test_two_pods_serve_one_model_on_ray_and_stop_leaves_nothing(pods):
    name = pods.name
    result = run_cli("start", MODEL, "--name", name, "--pods", "dc1,dc2", "--timeout", "300",
                     "--port", str(free_port()))
    assert result.code == 0, result.output
    assert "network: dc1 127.0.0.2, dc2 127.0.0.3" in result.stderr
    assert "--gpu-memory-utilization 0.90 (computed for tp=2 x pp=2" in result.stderr
    assert "Ray cluster ready: 2 nodes, 4 GPUs" in result.stderr
    assert len(hostops.get_host(pods.store, "dc2").gpus) == 2   # recorded from the pre-flight
    url = next(line.split()[-1] for line in result.stdout.splitlines() if "base URL" in line)
    assert url.startswith("http://127.0.0.2:")
    assert "Echo: hello across pods" in chat(url)

    # tp x pp checked against the cluster: every GPU of BOTH pods holds a worker's memory
    for state in pods.states:
        assert all(used > 70_000 for used in gpu_used(state)), gpu_used(state)
    # ONE record, on the head, with the shape the Kubernetes export reads
    listed = run_cli("list", "--all-pods", "--json")
    assert listed.code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["pod"], row["state"]) == (name, "dc1", "running")
    assert [(n["pod"], n["role"], n["state"]) for n in row["nodes"]] == [
        ("dc1", "head", "running"), ("dc2", "worker", "running")]
    spec = json.loads(run_cli("list", "--all-pods", "--json").stdout)[0]
    assert "--distributed-executor-backend" in spec["args"]
    record = pods.store.query_one("SELECT spec FROM services WHERE name = ?", (name,))
    mn = json.loads(record["spec"])["multinode"]
    assert (mn["pods"], mn["tp"], mn["pp"], mn["gpus_per_node"]) == (["dc1", "dc2"], 2, 2, 2)
    assert mn["nodes"]["dc2"] == {**mn["nodes"]["dc2"], "ip": "127.0.0.3", "role": "worker"}
    table = run_cli("list", "--all-pods")
    assert f"{name} nodes: dc1 (head, 127.0.0.2) running, dc2 (worker, 127.0.0.3) running" \
        in table.stdout
    assert KEY not in table.output and KEY not in record["spec"]

    logs = run_cli("logs", name, "--node", "dc2", "-n", "200")
    assert logs.code == 0 and "Ray runtime started" in logs.stdout
    assert "vLLM API server" in run_cli("logs", name, "-n", "50").stdout
    bad = run_cli("logs", name, "--node", "dc9")
    assert bad.code == 2 and "dc9 is not a node" in bad.stderr

    # The fake vLLM asks Ray for tp x pp GPUs like vLLM: too many -> vLLM's own message.
    head_pid = int((pods.sshds[0].remote_root / "services" / name / "service.pid").read_text())
    os.killpg(head_pid, signal.SIGKILL)   # the engine dies: Ray frees its placement group
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(u > 1000 for s in pods.states for u in gpu_used(s)):
        time.sleep(1)
    ray_port = mn["ray_port"]
    fake = FakeVLLM(MODEL, ["-tp", "4", "-pp", "2", "--distributed-executor-backend", "ray"],
                    log_path=pods.tmp_path / "too-big.log", gpu_state=pods.states[0],
                    env={"RAY_ADDRESS": f"127.0.0.2:{ray_port}", "VLLM_HOST_IP": "127.0.0.2",
                         "FAKE_VLLM_PG_TIMEOUT": "3"})
    try:
        assert fake.wait(timeout=120) == 1
    finally:
        fake.stop()
    assert ("ValueError: Cannot provide a placement group requiring 8.0 GPUs "
            "(placement_group_specs=[{'GPU': 1.0, 'node:127.0.0.2': 0.001}") in fake.log()
    assert "Tensor parallel size may exceed available GPUs in your cluster." in fake.log()

    crashed = json.loads(run_cli("list", "--all-pods", "--json").stdout)[0]
    assert crashed["state"] == "crashed"
    stopped = run_cli("stop", name)
    assert stopped.code == 0, stopped.output
    assert pods.store.query_one("SELECT 1 FROM services WHERE name = ?", (name,)) is None
    assert marked(name) == []
    for sshd in pods.sshds:
        assert not processes_in(sshd.remote_root)
        assert not (sshd.remote_root / "ray" / name).exists()


def test_failed_start_cleans_up_then_dead_worker_degrades_and_down_pod_keeps_record(pods):
    name = pods.name
    # vLLM fails on the head after Ray is up: both Ray nodes are stopped, nothing recorded.
    failed = run_cli("start", MODEL, "--name", name, "--pods", "dc1,dc2", "--force",
                     "--port", str(free_port()), "--vllm", "--gpu-memory-utilization", "0.01")
    assert failed.code == 7, failed.output
    assert "No available memory for the cache blocks" in failed.stderr
    assert pods.store.query_one("SELECT 1 FROM services") is None
    assert marked(name) == []

    result = run_cli("start", MODEL, "--name", name, "--pods", "dc1,dc2", "--timeout", "300",
                     "--port", str(free_port()))
    assert result.code == 0, result.output

    # A worker killed mid-run: the deployment is degraded, not running.
    worker_dir = pods.sshds[1].remote_root / "ray" / name
    os.killpg(int((worker_dir / "service.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(b"@dc2" in environ(p) for p in marked(name)):
        time.sleep(0.5)
    listing = run_cli("list", "--all-pods", "--json")
    (row,) = json.loads(listing.stdout)
    assert row["state"] == "degraded", row
    assert {n["pod"]: n["state"] for n in row["nodes"]} == {"dc1": "running", "dc2": "crashed"}
    assert "dc2 (Ray worker) crashed" in row["detail"]

    # The worker's pod is down at stop: the head is stopped, the record is kept.
    pods.sshds[1].stop()
    stopped = run_cli("stop", name, "--timeout", "5")
    assert stopped.code == 5, stopped.output
    assert "could not stop on dc2" in stopped.stderr and "the record is kept" in stopped.stderr
    mn = json.loads(pods.store.query_one("SELECT spec FROM services WHERE name = ?",
                                         (name,))["spec"])["multinode"]
    assert mn["stopped"] == ["dc1"]
    assert not processes_in(pods.sshds[0].remote_root)
    assert not [p for p in marked(name) if b"@dc1" in environ(p)]

    pods.sshds[1].start()
    again = run_cli("stop", name, "--timeout", "5")
    assert again.code == 0, again.output
    assert pods.store.query_one("SELECT 1 FROM services WHERE name = ?", (name,)) is None
    assert marked(name) == []


def test_a_pod_without_ray_is_refused_before_anything_starts(pods):
    (pods.sshds[1].bin_dir / "ray").unlink()
    result = run_cli("start", MODEL, "--name", pods.name, "--pods", "dc1,dc2")
    assert result.code == 7, result.output
    assert "error: Ray is not installed on dc2" in result.stderr
    assert "--ray` (installs ray[cgraph]>=2.48.0, the Ray vLLM pins)" in result.stderr
    assert pods.store.query_one("SELECT 1 FROM services") is None
    assert marked(pods.name) == []
    for bad, why in ((["--pods", "dc1"], "--pods needs two or more pods"),
                     (["--pods", "dc1,dc1"], "--pods names a pod twice"),
                     (["--pods", "dc1,dc2", "--gpus", "2"], "--gpus does not apply with --pods"),
                     (["--pods", "dc1,local"], "multi-node runs on pods")):
        refused = run_cli("start", MODEL, "--name", pods.name, *bad)
        assert refused.code == 2 and why in refused.stderr, refused.output


def test_sigterm_during_a_start_stops_ray_everywhere_and_a_down_pod_keeps_the_record(pods):
    """SIGTERM while vLLM loads: Ray and vLLM stop on every pod (exit 130, nothing
    recorded); with a pod down at that moment the record stays 'stopping' with what was
    confirmed, and `pi list --prune` finishes the cleanup once the pod is back."""
    from tests.support.procs import alive, pid_in, spawn, wait_for

    name = pods.name
    shim = pods.sshds[0].bin_dir / "vllm"   # vLLM on the head "loads" for a minute
    shim.write_text(shim.read_text().replace("FAKE_VLLM_STARTUP_SECONDS=0.2",
                                             "FAKE_VLLM_STARTUP_SECONDS=60", 1))
    head_pidfile = pods.sshds[0].remote_root / "services" / name / "service.pid"

    def loading() -> int | None:
        pid = pid_in(head_pidfile)  # the held launcher's pid, recorded before it was released
        try:
            engine = pid and b"fake_vllm" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if engine and any(b"@dc2" in environ(p) for p in marked(name)) else None

    def start() -> tuple[object, int]:
        proc = spawn("pi", "start", MODEL, "--name", name, "--pods", "dc1,dc2", "-q",
                     "--port", str(free_port()))
        pid = wait_for(loading, 240, "vLLM loading on the head with Ray on both pods", proc)
        row = pods.store.query_one("SELECT state, pid, spec FROM services WHERE name = ?",
                                   (name,))
        nodes = json.loads(row["spec"])["multinode"]["nodes"]
        assert (row["state"], row["pid"]) == ("starting", pid)  # recorded before it ran
        assert all(nodes[pod]["pid"] for pod in ("dc1", "dc2"))
        return proc, pid

    proc, pid = start()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "start cancelled; vLLM and Ray were stopped on every pod and nothing recorded" \
        in err and "Traceback" not in err
    assert not alive(pid) and marked(name) == []
    assert pods.store.query_one("SELECT 1 FROM services WHERE name = ?", (name,)) is None
    for sshd in pods.sshds:
        assert not processes_in(sshd.remote_root)

    proc, pid = start()
    pods.sshds[1].stop()   # the worker's pod drops, then the start is told to stop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "the record of " + name + " is kept, `pi stop " + name + "` finishes" in err
    assert not alive(pid) and not processes_in(pods.sshds[0].remote_root)
    (row,) = json.loads(run_cli("list", "--pod", "dc1", "--json").stdout)
    assert (row["state"], row["recorded_state"]) == ("stopping", "stopping"), row
    assert "not confirmed on dc2" in row["note"] and "dc2 (Ray worker) unreachable" in \
        row["detail"]
    assert {n["pod"]: n["state"] for n in row["nodes"]} == {"dc1": "stopped",
                                                             "dc2": "unreachable"}
    record = pods.store.query_one("SELECT spec FROM services WHERE name = ?", (name,))
    assert json.loads(record["spec"])["multinode"]["stopped"] == ["dc1"]
    refused = run_cli("list", "--pod", "dc1", "--prune")   # dc2 may still run Ray: kept
    assert pods.store.query_one("SELECT 1 FROM services WHERE name = ?", (name,)), \
        refused.output

    # While its pod was away, the worker died with the head: its whole process group (Ray's
    # renamed children outlive a kill of the marked processes alone, and a group member
    # still alive counts as running, as it should).
    worker_pid = int((pods.sshds[1].remote_root / "ray" / name / "service.pid").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker_pid, signal.SIGKILL)
    kill_marked(name)
    wait_for(lambda: not processes_in(pods.sshds[1].remote_root), 60,
             "the worker node's last processes to exit")
    pods.sshds[1].start()
    pruned = run_cli("list", "--all-pods", "--prune")
    assert pruned.code == 0, pruned.output
    assert pods.store.query_one("SELECT 1 FROM services WHERE name = ?", (name,)) is None
    assert marked(name) == []
    for sshd in pods.sshds:
        assert not processes_in(sshd.remote_root)
