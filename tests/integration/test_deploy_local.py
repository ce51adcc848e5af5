"""pi start / list / logs / stop on `local` with the fake vLLM (and fake nvidia-smi).

The fakes run as real processes: the supervisor really launches them with
setsid, health is really probed over HTTP, stop really signals the group.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpumod.ops import hosts as hostops
from tests.support.cli import run_cli
from tests.support.pods import KEY, MODEL, fake_hf_cache


def port_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ps_args() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def processes_in(folder: Path) -> list[str]:
    """Live (non-zombie) processes working in a folder under `folder` (our services run in
    their service folder), so other tests' engines on this machine do not count."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if cwd.startswith(str(folder)):
            found.append(cmd)
    return found


def first_free_port(start: int = 8001) -> int:
    port = start
    while port_listening(port):
        port += 1
    return port


def url_port(stdout: str) -> int:
    match = re.search(r"base URL:\s+http://127\.0\.0\.1:(\d+)/v1", stdout)
    assert match, stdout
    return int(match.group(1))


def start(*args: str):
    return run_cli("start", *args)


def test_start_list_logs_stop_with_fake_vllm(local_env):
    expected = first_free_port()
    result = start(MODEL, "--name", "qwen", "--memory", "40%", "--context", "16k")
    assert result.code == 0, result.output
    port = url_port(result.stdout)
    assert port == expected
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 OPENAI_MODEL=Qwen/Qwen2.5-0.5B" \
        in result.stdout
    assert KEY not in result.output and KEY[-4:] in result.stdout  # masked
    # the catalog's config for this model, with --memory / --context replacing values
    manifest = json.loads((local_env.home / "services/qwen/manifest.json").read_text())
    argv = manifest["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.4"
    assert argv[argv.index("--max-model-len") + 1] == "16384"
    assert argv.count("--max-model-len") == 1
    assert "--tool-call-parser" in argv
    assert manifest["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert manifest["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    listed = run_cli("list", "--json")
    assert listed.code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["state"], row["port"], row["gpus"]) == ("qwen", "running", port, [0])

    logs = run_cli("logs", "qwen", "-n", "50")
    assert logs.code == 0
    assert "Uvicorn running" in logs.stdout or "Application startup complete" in logs.stdout

    stopped = run_cli("stop", "qwen")
    assert stopped.code == 0, stopped.output
    assert not port_listening(port)
    assert json.loads(run_cli("list", "--json").stdout) == []
    assert not (local_env.home / "services/qwen").exists()


def test_api_key_is_in_no_argv_log_or_manifest(local_env):
    result = start(MODEL, "--name", "q")
    assert result.code == 0, result.output
    assert KEY not in ps_args()
    folder = local_env.home / "services/q"
    assert KEY not in (folder / "service.log").read_text()
    assert KEY not in (folder / "manifest.json").read_text()
    assert KEY not in (folder / "service.env").read_text()
    secrets = folder / "secrets.env"
    assert KEY in secrets.read_text()
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    # ...and the engine really got it: /v1 refuses a request without it
    import httpx

    base = f"http://127.0.0.1:{url_port(result.stdout)}/v1"
    assert httpx.get(f"{base}/models").status_code == 401
    ok = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    stopped = run_cli("stop", "q")
    assert stopped.code == 0
    assert not secrets.exists()


def test_second_service_gets_next_port_and_other_gpu(local_env):
    assert start(MODEL, "--name", "a", "--idle-ttl", "5m", "--alias", "fast").code == 0
    extra = local_env.store.query_one("SELECT spec FROM services WHERE name = 'a'")["spec"]
    assert json.loads(extra)["idle_ttl"] == 300.0 and json.loads(extra)["aliases"] == ["fast"]
    assert start(MODEL, "--name", "b").code == 0
    rows = {r["name"]: r for r in json.loads(run_cli("list", "--json").stdout)}
    assert rows["b"]["port"] > rows["a"]["port"] >= 8001
    assert rows["a"]["gpus"] != rows["b"]["gpus"]


def test_port_busy_on_host_is_skipped_and_explicit_busy_port_refused(local_env):
    busy = first_free_port()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like real servers do
        s.bind(("127.0.0.1", busy))
        s.listen()
        refused = start(MODEL, "--name", "x", "--port", str(busy))
        assert refused.code == 4
        assert f"port {busy}" in refused.stderr and "taken" in refused.stderr
        assert json.loads(run_cli("list", "--json").stdout) == []
        ok = start(MODEL, "--name", "y")
        assert ok.code == 0, ok.output
        assert url_port(ok.stdout) > busy


def test_engine_error_is_shown_and_nothing_is_left(local_env, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "CUDA out of memory. Tried to allocate 20.00 GiB")
    result = start(MODEL, "--name", "boom", "-q")
    assert result.code == 7
    assert "CUDA out of memory" in result.stderr
    assert result.stderr.count("\nerror:") + result.stderr.startswith("error:") == 1
    assert json.loads(run_cli("list", "--json").stdout) == []
    assert not (local_env.home / "services/boom").exists()
    assert not processes_in(local_env.home)


def test_health_deadline_stops_the_engine_and_records_nothing(local_env, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_STARTUP_SECONDS", "60")
    began = time.monotonic()
    result = start(MODEL, "--name", "slow", "--timeout", "2", "-q")
    assert result.code == 7
    assert "not healthy within 2s" in result.stderr
    assert time.monotonic() - began < 30
    assert json.loads(run_cli("list", "--json").stdout) == []
    assert not processes_in(local_env.home)


def test_stop_escalates_to_kill_when_term_is_ignored(local_env, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_IGNORE_TERM", "1")
    assert start(MODEL, "--name", "stubborn").code == 0
    result = run_cli("stop", "stubborn", "--timeout", "1")
    assert result.code == 0, result.output
    assert "killed" in result.stdout
    assert not processes_in(local_env.home)


def test_crashed_service_is_shown_as_crashed_and_pruned(local_env):
    assert start(MODEL, "--name", "c").code == 0
    pid = int((local_env.home / "services/c/service.pid").read_text())
    os.killpg(pid, 9)
    time.sleep(0.3)
    listed = run_cli("list", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "crashed"
    pruned = run_cli("list", "--prune")
    assert pruned.code == 0
    assert "pruned c" in pruned.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_prune_says_what_it_kept_while_another_command_changes_it(local_env):
    """A crashed deployment that another command holds is kept and said, never skipped
    silently; the next prune forgets it."""
    from gpumod.ops import locks

    assert start(MODEL, "--name", "c").code == 0
    pid = int((local_env.home / "services/c/service.pid").read_text())
    os.killpg(pid, 9)
    time.sleep(0.3)
    with locks.service_lock("c", wait=1, what="another command"):
        kept = run_cli("list", "--prune")
    assert kept.code == 0, kept.output
    assert "kept c: " in kept.stderr and "pruned" not in kept.stderr
    assert [r["name"] for r in json.loads(run_cli("list", "--json").stdout)] == ["c"]
    pruned = run_cli("list", "--prune")
    assert "pruned c" in pruned.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_port_inside_engine_args_is_refused(local_env):
    result = start("someone/unknown-model", "--name", "u", "--vllm", "--port", "9999")
    assert result.code == 2
    assert "--port" in result.stderr and "before --vllm" in result.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_unknown_model_runs_with_defaults_and_says_possibly_works(local_env):
    fake_hf_cache(local_env.hf_home, "someone/unknown-model")
    result = start("someone/unknown-model", "--name", "u", "--gpus", "2")
    assert result.code == 0, result.output
    assert "possibly works" in result.stdout
    manifest = json.loads((local_env.home / "services/u/manifest.json").read_text())
    assert manifest["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "--tensor-parallel-size" in manifest["argv"]


def test_vllm_args_tail_is_passed_verbatim_and_gpu_count_follows_tp(local_env):
    fake_hf_cache(local_env.hf_home, "someone/custom")
    result = start("someone/custom", "--name", "cu", "--memory", "30%", "--vllm",
                   "--tensor-parallel-size", "2", "--max-model-len=4096", "--enforce-eager")
    assert result.code == 0, result.output
    assert "--memory ignored" in result.stderr
    manifest = json.loads((local_env.home / "services/cu/manifest.json").read_text())
    assert manifest["argv"][-4:] == ["--tensor-parallel-size", "2", "--max-model-len=4096",
                                     "--enforce-eager"]
    assert "--gpu-memory-utilization" not in manifest["argv"]
    assert manifest["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


# -- bad input and faults (issue item 10) --------------------------------------------


def test_missing_api_key_is_a_clear_error(local_env, monkeypatch):
    monkeypatch.delenv("PI_API_KEY")
    result = start(MODEL, "--name", "k")
    assert result.code == 2
    assert "PI_API_KEY is not set" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--context", "64kb"], "invalid context size"),
    (["--context", "2m"], "out of range"),
    (["--memory", "150%"], "out of range"),
    (["--memory", "half"], "invalid memory share"),
    (["--name", "bad name!"], "invalid service name"),
    (["--idle-ttl", "soon"], "invalid idle TTL"),
    (["--alias", "two words"], "invalid alias"),
])
def test_bad_values_are_rejected_before_anything_runs(local_env, args, message):
    base = ["--name", "ok"] if "--name" not in args else []
    result = start(MODEL, *base, *args)
    assert result.code == 2, result.output
    assert message in result.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_duplicate_name_is_refused(local_env):
    assert start(MODEL, "--name", "dup").code == 0
    again = start(MODEL, "--name", "dup")
    assert again.code == 4
    assert "already exists" in again.stderr
    assert len(json.loads(run_cli("list", "--json").stdout)) == 1


def test_an_alias_a_running_deployment_answers_to_is_refused_before_launch(local_env):
    """The gateway routes a served model or a service name before any alias: `pi start
    --alias` naming one of them is refused, and the first deployment runs on untouched."""
    assert start(MODEL, "--name", "first", "--alias", "chat").code == 0
    for alias in ("first", "chat"):  # (its served model is MODEL, second's own: dropped)
        again = start(MODEL, "--name", "second", "--alias", alias)
        assert again.code == 4, again.output
        assert again.stderr.startswith(f"error: --alias {alias}: the gateway on local "
                                       "already routes that name to 'first'")
    (row,) = json.loads(run_cli("list", "--json").stdout)
    assert (row["name"], row["state"], row["aliases"]) == ("first", "running", ["chat"])


def test_unknown_pod_and_unknown_service(local_env):
    assert start(MODEL, "--name", "p", "--pod", "nope").code == 3
    for args in (["stop", "ghost"], ["logs", "ghost"], ["tunnel", "ghost"]):
        result = run_cli(*args)
        assert result.code == 3, args
        assert "unknown service 'ghost'" in result.stderr


def test_model_path_missing_on_host(local_env, tmp_path):
    result = start(str(tmp_path / "nowhere"), "--name", "m")
    assert result.code == 3
    assert "does not exist" in result.stderr


def test_engine_not_installed(local_env, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    result = start(MODEL, "--name", "e")
    assert result.code == 7
    assert "vllm is not installed on this machine" in result.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_too_many_gpus_is_a_capacity_error(local_env):
    result = start(MODEL, "--name", "g", "--vllm", "--tensor-parallel-size", "4")
    assert result.code == 8
    assert "needs 4 GPU(s)" in result.stderr


def test_two_starts_at_the_same_moment_get_different_ports_and_gpus(local_env):
    fake_hf_cache(local_env.hf_home, MODEL)
    env = {**os.environ, "GPUMOD_HOME": str(local_env.home)}
    procs = [subprocess.Popen([sys.executable, "-m", "gpumod.cli.main", "start", MODEL,
                               "--name", f"twin{i}", "-q"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = json.loads(run_cli("list", "--json").stdout)
    assert {r["state"] for r in rows} == {"running"}
    assert len({r["port"] for r in rows}) == 2
    assert len({tuple(r["gpus"]) for r in rows}) == 2


def test_logs_follow_streams_until_interrupted_and_the_service_keeps_running(local_env):
    assert start(MODEL, "--name", "f").code == 0
    env = {**os.environ, "GPUMOD_HOME": str(local_env.home)}
    proc = subprocess.Popen([sys.executable, "-m", "gpumod.cli.main", "logs", "f", "-f",
                             "-n", "5"], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.strip()
    (row,) = json.loads(run_cli("list", "--json").stdout)
    assert row["state"] == "running"


def test_download_with_progress_when_not_cached(local_env):
    """`hf download` on the host fills the cache (a shim stands in for the real hub)."""
    hf = local_env.bin_dir / "hf"
    hf.write_text("#!/bin/sh\n"
                  "[ \"$1\" = download ] || exit 2\n"
                  "echo 'Fetching 3 files: 100%'\n"
                  "d=\"$HF_HOME/hub/models--$(echo \"$2\" | sed 's|/|--|g')/snapshots/feed\"\n"
                  "mkdir -p \"$d\" && echo '{}' > \"$d/config.json\" && echo \"$d\"\n")
    hf.chmod(0o755)
    result = start("Qwen/Qwen3-0.6B", "--name", "dl")
    assert result.code == 0, result.output
    assert "downloading Qwen/Qwen3-0.6B" in result.stderr
    assert "Fetching 3 files" in result.stderr


def test_failed_download_records_nothing(local_env):
    hf = local_env.bin_dir / "hf"
    hf.write_text("#!/bin/sh\necho '401 Client Error: gated repo' >&2\nexit 1\n")
    hf.chmod(0o755)
    result = start("Qwen/Qwen3-0.6B", "--name", "dl")
    assert result.code == 2  # the cause, read from hf's output: a usage problem, not the engine
    assert "failed: 403: Qwen/Qwen3-0.6B is gated" in result.stderr
    assert "HF_TOKEN" in result.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_start_without_model_lists_known_models_for_the_host(local_env):
    result = run_cli("start")
    assert result.code == 0
    assert "Qwen/Qwen2.5-Coder-32B-Instruct" in result.stdout  # fits 1x H100
    assert "moonshotai/Kimi-K2-Instruct" not in result.stdout  # needs 16 GPUs


def test_threads_reserving_at_once_never_share_a_port(local_env):
    """Reservation is one transaction: 8 threads with their own connections."""
    from gpumod.ops import services as records
    from gpumod.spec import ServiceSpec
    from gpumod.store.db import Store

    host = hostops.get_host(local_env.store, "local")
    got: list = []
    errors: list = []

    def worker(i: int) -> None:
        try:
            store = Store(local_env.store.path)
            spec = ServiceSpec(name=f"t{i}", host="local", engine="vllm", model=MODEL, port=0)
            got.append(records.reserve(store, spec, host, gpu_count=1, listening=set()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.port for r in got) == list(range(8001, 8009))  # listening=set() given
    with local_env.store.transaction() as db:
        db.execute("DELETE FROM services")


def test_definitions_show_stopped_are_never_pruned_and_pi_stop_keeps_them(local_env):
    """A `gpumod service` definition never started is 'stopped' (not 'crashed')."""
    from gpumod.ops import lifecycle
    from gpumod.spec import ServiceSpec

    lifecycle.add_service(local_env.store, ServiceSpec("kept", "local", "vllm", MODEL, 0,
                                                       gpus=(0,)))
    (row,) = json.loads(run_cli("list", "--json").stdout)
    assert (row["name"], row["state"], row["process"]) == ("kept", "stopped", "stopped")
    pruned = run_cli("list", "--prune")
    assert pruned.code == 0 and "pruned" not in pruned.stderr
    assert run_cli("stop", "kept").code == 0
    (row,) = json.loads(run_cli("list", "--json").stdout)
    assert (row["name"], row["state"], row["recorded_state"]) == ("kept", "stopped", "stopped")


def test_ctrl_c_during_download_cancels_it_and_leaves_nothing(local_env):
    """SIGINT while `hf download` runs: the download stops, nothing runs, nothing is recorded."""
    import signal

    marker = local_env.home / "hf-started"
    hf = local_env.bin_dir / "hf"
    hf.write_text(f"#!/bin/sh\necho $$ > {marker}\necho 'Fetching 3 files:   0%'\n"
                  "exec sleep 120\n")
    hf.chmod(0o755)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pi"), "start", "Qwen/Qwen3-0.6B",
                             "--name", "dl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "download cancelled" in err
    assert "Traceback" not in err
    hf_pid = int(marker.read_text())
    for _ in range(100):
        try:
            state = Path(f"/proc/{hf_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the download is still running")
    assert json.loads(run_cli("list", "--json").stdout) == []
