"""`pi pods ...`, `pi ssh`, `gpumod status` against a real loopback sshd "pod"."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli

pytestmark = pytest.mark.sshd

H100 = {"index": 0, "uuid": "GPU-aaaa-0000", "name": "NVIDIA H100 80GB HBM3",
        "memory_total_mib": 81559}


@pytest.fixture
def pod(sshd, tmp_path):
    """The loopback sshd with a fake nvidia-smi (two H100s) on its PATH."""
    from gpumod.testing.fake_nvidia_smi import write_state
    from gpumod.testing.shims import install_shims

    state = tmp_path / "pod-gpus.json"
    write_state(state, [H100, {**H100, "index": 1, "uuid": "GPU-aaaa-0001"}])
    install_shims(sshd.bin_dir, gpu_state=state)
    sshd.gpu_state = state
    return sshd


def _stored_hosts() -> list[dict]:
    result = run_cli("pods", "--json")
    assert result.code == 0, result.output
    return json.loads(result.stdout)


def test_setup_no_install_registers_gpus_and_becomes_active(pod):
    result = run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install")
    assert result.code == 0, result.output
    assert "==> detecting GPUs" in result.stderr  # live progress
    assert "pod dc1 registered: 2x NVIDIA H100 80GB HBM3 80GB" in result.stdout
    hosts = {h["name"]: h for h in _stored_hosts()}
    assert hosts["dc1"]["active"] is True
    assert [g["uuid"] for g in hosts["dc1"]["gpus"]] == ["GPU-aaaa-0000", "GPU-aaaa-0001"]
    assert hosts["dc1"]["root"] == str(pod.remote_root)
    listing = run_cli("pods")
    star_line = next(line for line in listing.stdout.splitlines() if "dc1" in line)
    assert star_line.lstrip().startswith("*")


def test_no_install_on_a_bare_pod_records_no_placeholder_paths(pod):
    """The setup script reports what is missing as "none"; that is not a venv called
    "none" (it used to become VIRTUAL_ENV=none and PATH entry none/bin for engines)."""
    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    env = {h["name"]: h for h in _stored_hosts()}["dc1"]["engine_env"]
    assert "none" not in env.values(), env
    assert "venv" not in env and "python" not in env and "vllm_version" not in env
    assert "bin_dirs" not in env
    assert env["driver_version"]  # real facts are still kept


def test_second_pod_does_not_steal_active_and_active_switches(pod):
    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    assert run_cli("pods", "setup", "dc2", pod.ssh_command.replace("root@", "-l root "),
                   "--no-install").code == 0
    hosts = {h["name"]: h["active"] for h in _stored_hosts()}
    assert hosts == {"local": False, "dc1": True, "dc2": False}
    assert run_cli("pods", "active", "dc2").code == 0
    assert run_cli("pods", "active", "local").code == 0
    assert {h["name"]: h["active"] for h in _stored_hosts()}["local"] is True


def test_rerun_setup_keeps_deployments(pod):
    from gpumod.store import open_store

    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    with open_store().transaction() as db:
        db.execute("INSERT INTO services (name, host, engine, model, port) "
                   "VALUES ('qwen', 'dc1', 'vllm', 'Qwen/Qwen3-0.6B', 8001)")
    again = run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install")
    assert again.code == 0, again.output
    assert "pod dc1 updated" in again.stdout
    rows = open_store().query("SELECT name FROM services WHERE host = 'dc1'")
    assert [r["name"] for r in rows] == ["qwen"]


def test_duplicate_name_for_another_machine_is_refused_and_state_kept(pod):
    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    before = _stored_hosts()
    result = run_cli("pods", "setup", "dc1", "ssh root@10.255.255.1", "--no-install")
    assert result.code == 4
    assert result.stderr.startswith("error: pod 'dc1' already exists")
    assert _stored_hosts() == before


def test_unreachable_host_records_nothing(pod):
    pod.stop()
    result = run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install")
    assert result.code == 5
    assert "pod dc1" in result.stderr and "Connection refused" in result.stderr
    assert "hint:" in result.stderr
    assert [h["name"] for h in _stored_hosts()] == ["local"]


def test_refused_authentication(pod, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    command = pod.ssh_command.replace(str(pod.client_key), str(other)).replace(
        "ssh ", "ssh -o IdentitiesOnly=yes ", 1)
    result = run_cli("pods", "setup", "dc1", command, "--no-install")
    assert result.code == 5
    assert "Permission denied" in result.stderr
    assert [h["name"] for h in _stored_hosts()] == ["local"]


def test_ssh_timeout_is_reported(pod):
    # A server that accepts TCP but never speaks SSH: the banner never comes.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    try:
        command = f"ssh -o ConnectTimeout=2 -p {port} root@127.0.0.1"
        started = time.monotonic()
        result = run_cli("pods", "setup", "slow", command, "--no-install")
        assert time.monotonic() - started < 30
    finally:
        silent.close()
    assert result.code == 5
    assert "timed out" in result.stderr.lower()
    assert [h["name"] for h in _stored_hosts()] == ["local"]


def test_host_without_nvidia_smi_is_refused(sshd):
    result = run_cli("pods", "setup", "cpu", sshd.ssh_command, "--no-install")
    assert result.code == 6
    assert "nvidia-smi not found" in result.stderr
    assert [h["name"] for h in _stored_hosts()] == ["local"]


def test_setup_needs_secrets_unless_no_install(pod, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    result = run_cli("pods", "setup", "dc1", pod.ssh_command)
    assert result.code == 2
    assert result.stderr.splitlines()[0] == "error: PI_API_KEY must be set for pod setup"
    assert [h["name"] for h in _stored_hosts()] == ["local"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["Bad Name", "ssh root@h"], "invalid pod name"),
        (["local", "ssh root@h"], "needs no setup"),
        (["p", "root@h"], "must start with 'ssh'"),
        (["p", "ssh root@h", "--vllm", ">=0.10"], "invalid --vllm"),
        (["p", "ssh root@h", "--models-path", "relative/dir"], "must be absolute"),
    ],
)
def test_bad_setup_input(args, fragment):
    result = run_cli("pods", "setup", *args, "--no-install")
    assert result.code == 2
    assert fragment in result.stderr


def test_pi_ssh_exit_code_and_output(pod):
    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    bindir = Path(sys.executable).parent
    env = {**os.environ}
    proc = subprocess.run([str(bindir / "pi"), "ssh", "dc1", "echo hello; exit 3"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 3
    assert proc.stdout == "hello\n"
    proc = subprocess.run([str(bindir / "pi"), "ssh", "echo $GPUMOD_REMOTE_HOME"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.stdout.strip() == str(pod.remote_root)  # active pod, not local


def test_status_on_pod_shows_gpus_and_processes(pod):
    from gpumod.testing.fake_nvidia_smi import register_process

    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        register_process(pod.gpu_state, sleeper.pid, "python3", [0], 30000)
        result = run_cli("status", "--pod", "dc1", "--json", prog="gpumod")
        assert result.code == 0, result.output
        data = json.loads(result.stdout)
        assert [g["index"] for g in data["gpus"]] == [0, 1]
        gpu0 = data["gpus"][0]
        assert gpu0["memory_used_mib"] == 30000
        assert gpu0["memory_free_mib"] == 81559 - 30000
        assert [(p["pid"], p["used_mib"], p["gpu"]) for p in data["processes"]] == [
            (sleeper.pid, 30000, 0)]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_remove_forgets_local_records_only(pod):
    assert run_cli("pods", "setup", "dc1", pod.ssh_command, "--no-install").code == 0
    result = run_cli("pods", "remove", "dc1")
    assert result.code == 0
    assert "the machine itself was not touched" in result.stdout
    assert [h["name"] for h in _stored_hosts()] == ["local"]
    assert _stored_hosts()[0]["active"] is True
    assert pod.remote_root.exists()


def test_unknown_pod_everywhere():
    for args in (["pods", "active", "nope"], ["pods", "remove", "nope"],
                 ["status", "--pod", "nope"], ["ssh", "nope", "true"]):
        result = run_cli(*args)
        assert result.code == 3, args
        assert "unknown pod 'nope'" in result.stderr


def test_ctrl_c_during_setup_stops_remote_script_and_records_nothing(pod, tmp_path,
                                                                     monkeypatch):
    """SIGINT while the bootstrap runs: the remote script is killed, nothing stored."""
    marker = tmp_path / "uv-started"
    uv = pod.bin_dir / "uv"
    uv.write_text(f"#!/bin/sh\necho $$ > {marker}\nexec sleep 120\n")
    uv.chmod(0o755)
    env = {**os.environ, "HF_TOKEN": "hf_secret_token_x", "PI_API_KEY": "pi_secret_key_x"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pi"), "pods", "setup", "dc1",
                             pod.ssh_command], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()[1] if proc.poll() is not None else "no uv call"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "setup cancelled" in err
    uv_pid = int(marker.read_text())
    for _ in range(100):
        if not _alive(uv_pid):
            break
        time.sleep(0.1)
    assert not _alive(uv_pid), "the remote step is still running"
    assert [h["name"] for h in _stored_hosts()] == ["local"]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_three_pods_set_up_at_once_all_land(tmp_path):
    """Concurrent setups of different pods: the store serialises, none is lost."""
    from gpumod.testing.fake_nvidia_smi import write_state
    from gpumod.testing.shims import install_shims
    from tests.support.sshd import LoopbackSSHD

    servers = []
    try:
        for i in range(3):
            server = LoopbackSSHD(tmp_path / f"pod{i}").start()
            write_state(tmp_path / f"g{i}.json", ["h100"])
            install_shims(server.bin_dir, gpu_state=tmp_path / f"g{i}.json")
            servers.append(server)
        results: list = []

        def go(i: int) -> None:
            results.append(subprocess.run(
                [str(Path(sys.executable).parent / "pi"), "pods", "setup", f"p{i}",
                 servers[i].ssh_command, "--no-install"],
                capture_output=True, text=True, check=False))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr[-300:] for r in results]
        assert sorted(h["name"] for h in _stored_hosts()) == ["local", "p0", "p1", "p2"]
    finally:
        for server in servers:
            server.stop()


def test_full_setup_installs_with_progress_and_keeps_secrets_out_of_sight(sshd, tmp_path,
                                                                          monkeypatch):
    """`pi pods setup` end to end, installers replaced by recording shims on the pod."""
    from tests.support.shims import install_setup_shims

    shims = install_setup_shims(sshd.bin_dir, tmp_path / "shim-state")
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_token_123")
    monkeypatch.setenv("PI_API_KEY", "pi_SECRET_key_456")
    result = run_cli("pods", "setup", "dc1", sshd.ssh_command, "--vllm", "0.10.1")
    assert result.code == 0, result.output
    for step in ("uv (Python package manager)", "PyTorch", "vLLM", "huggingface_hub"):
        assert step in result.stderr
    assert "hf_SECRET" not in result.output and "pi_SECRET" not in result.output
    secrets = sshd.remote_root / "secrets.env"
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    assert "pi_SECRET_key_456" in secrets.read_text()
    for path in sshd.remote_home.rglob("*"):
        if path.is_file() and path.suffix not in {".pyc"}:
            text = path.read_text(errors="replace")
            assert "SECRET" not in text, f"secret leaked into {path}"
    assert all("SECRET" not in " ".join(call) for call in shims.calls())
    host = {h["name"]: h for h in _stored_hosts()}["dc1"]
    assert host["engine_env"]["venv"] == f"{sshd.remote_home}/venv"
    assert host["vllm"] == "0.10.1"

    again = run_cli("pods", "setup", "dc1", sshd.ssh_command)
    assert again.code == 0, again.output
    assert "already done" in again.stderr
    assert "pod dc1 updated" in again.stdout


def test_setup_takes_options_after_the_host_as_openssh_does(pod):
    """Providers print "ssh root@HOST -p PORT -i KEY": OpenSSH accepts options after the
    destination, so gpumod does too (a remote command there is still refused)."""
    command = (f"ssh root@127.0.0.1 -p {pod.port} -i {pod.client_key} "
               f"-o UserKnownHostsFile={pod.known_hosts}")
    result = run_cli("pods", "setup", "rp", command, "--no-install")
    assert result.code == 0, result.output
    assert "pod rp registered: 2x NVIDIA H100 80GB HBM3" in result.stdout
    pi = Path(sys.executable).parent / "pi"
    ran = subprocess.run([str(pi), "ssh", "rp", "echo works"], capture_output=True, text=True,
                         check=False)
    assert (ran.returncode, ran.stdout) == (0, "works\n")
    refused = run_cli("pods", "setup", "rq", f"{command} nvidia-smi", "--no-install")
    assert refused.code == 2 and "remote command after the host" in refused.stderr
    assert [h["name"] for h in _stored_hosts()] == ["local", "rp"]
