"""The pod bootstrap script, run over real SSH with recording shims for the installers.

The loopback sshd is the "pod"; the script runs with its own HOME (a temp folder) and a
PATH of the shims plus /usr/bin:/bin, so nothing of this machine is touched or used.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpumod.hosts.sshcmd import parse_ssh_command
from gpumod.hosts.transports.ssh import SSHTransport
from tests.support.real import require_real
from tests.support.shims import NIGHTLY_VLLM, SetupShims, install_setup_shims

pytestmark = pytest.mark.sshd

SCRIPT = Path(__file__).resolve().parents[2] / "src/gpumod/scripts/pod_setup.sh"
HF_SECRET = "hf_SeCrEtToKeN4242abcdef"
API_SECRET = "pi-key-9f8e7d6c5b4a-TOPSECRET"
ALL_STEPS = ["gpu", "cuda", "uv", "python", "venv", "torch", "vllm", "flashinfer", "hf",
             "secrets", "hf_cache", "env", "bashrc"]


@dataclass
class Run:
    returncode: int
    stdout: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def outcomes(self) -> dict[str, tuple[str, str]]:
        """step id -> (ok|skip|fail, text), in the order the steps ran."""
        found: dict[str, tuple[str, str]] = {}
        for line in self.lines:
            if line.startswith("::step "):
                found[line.split()[1]] = ("running", "")
            for kind in ("ok", "skip", "fail"):
                if line.startswith(f"::{kind} "):
                    _, step, *rest = line.split(" ", 2)
                    found[step] = (kind, rest[0] if rest else "")
        return found

    def statuses(self) -> dict[str, str]:
        return {step: kind for step, (kind, _) in self.outcomes().items()}

    def facts(self) -> dict[str, str]:
        facts = {}
        for line in self.lines:
            if line.startswith("::fact "):
                _, key, value = line.split(" ", 2)
                facts[key] = value
        return facts


class Pod:
    def __init__(self, sshd, tmp_path: Path, *, nvidia_smi: bool = True) -> None:
        self.transport = SSHTransport(parse_ssh_command(sshd.ssh_command), label="pod t")
        self.root = Path(sshd.remote_root)
        self.home = tmp_path / "remote-home"
        self.home.mkdir()
        self.shims: SetupShims = install_setup_shims(Path(sshd.bin_dir), tmp_path / "shim-state",
                                                     nvidia_smi=nvidia_smi)
        self.path = f"{sshd.bin_dir}:/usr/bin:/bin"
        self.cuda_home = tmp_path / "no-cuda-here"
        shutil.copy(SCRIPT, self.root / "pod_setup.sh")
        (self.root / "pod_setup.sh").chmod(0o755)

    @property
    def script(self) -> str:
        return str(self.root / "pod_setup.sh")

    def write_secrets(self) -> None:
        """As gpumod does: through SSH stdin into a 0600 file."""
        body = f"HF_TOKEN={HF_SECRET}\nPI_API_KEY={API_SECRET}\n"
        self.transport.run(["sh", "-c", 'umask 077; cat > "$1"', "sh",
                            str(self.root / "secrets.env")], input=body).check("secrets")

    def argv(self, *args: str) -> list[str]:
        return ["env", f"HOME={self.home}", f"PATH={self.path}", f"CUDA_HOME={self.cuda_home}",
                "bash", self.script, *args]

    def setup(self, *args: str, timeout: float = 120) -> Run:
        result = self.transport.run(self.argv(*args), timeout=timeout)
        return Run(result.returncode, result.stdout + result.stderr)


@pytest.fixture
def pod(sshd, tmp_path) -> Pod:
    p = Pod(sshd, tmp_path)
    p.write_secrets()
    (p.home / ".bashrc").write_text("# user's own bashrc\nalias ll='ls -l'\n")
    return p


def tree(*bases: Path) -> dict[str, tuple]:
    """Every entry below the bases: type+mode, size, mtime, link target."""
    rows: dict[str, tuple] = {}
    for base in bases:
        for folder, dirs, files in os.walk(base, followlinks=False):
            for name in [*dirs, *files]:
                path = Path(folder, name)
                st = path.lstat()
                target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
                size = None if stat.S_ISDIR(st.st_mode) else st.st_size
                rows[str(path)] = (st.st_mode, size, st.st_mtime_ns, target)
    return rows


def installer_calls(shims: SetupShims) -> list[list[str]]:
    """Calls that change something (everything but read-only probes)."""
    changing = []
    for record in shims.records():
        tool, argv = record["tool"], record["argv"]
        if tool == "nvidia-smi" or tool == "apt-cache":
            continue
        if tool == "uv" and (argv[:1] == ["--version"] or argv[:2] == ["python", "find"]):
            continue
        changing.append([tool, *argv])
    return changing


# ----------------------------------------------------------------------------- first run


def test_first_run_runs_every_step_and_reports_facts(pod):
    run = pod.setup()
    assert run.returncode == 0, run.stdout
    statuses = run.statuses()
    assert list(statuses) == ALL_STEPS
    for step in ("gpu", "cuda", "uv", "python", "venv", "torch", "vllm", "flashinfer", "hf",
                 "hf_cache", "env", "bashrc"):
        assert statuses[step] == "ok", (step, run.stdout)
    assert statuses["secrets"] == "skip"  # present and already 0600

    calls = installer_calls(pod.shims)
    home = str(pod.home)
    venv_py = f"{home}/venv/bin/python"
    assert pod.shims.calls("apt-get") == [
        ["update"], ["install", "-y", "--no-install-recommends", "cuda-toolkit-12-4"]]
    assert pod.shims.calls("dpkg")[0][0] == "-i"  # NVIDIA's repository keyring
    assert any(c[0] == "curl" and "https://astral.sh/uv/install.sh" in c for c in calls)
    assert (pod.shims.state_dir / "uv-installer.env").read_text().strip() == "UV_NO_MODIFY_PATH=1"
    assert ["uv", "python", "install", "3.12"] in calls
    assert ["uv", "venv", "--python", "3.12", "--seed", f"{home}/venv"] in calls
    assert ["uv", "pip", "install", "--python", venv_py, "torch", "--torch-backend=auto"] in calls
    assert ["uv", "pip", "install", "--python", venv_py, "-U", "vllm",
            "--torch-backend=auto"] in calls
    assert ["uv", "pip", "install", "--python", venv_py, "flashinfer-python"] in calls
    assert ["uv", "pip", "install", "--python", venv_py, "huggingface_hub", "hf_xet"] in calls
    assert ["uv", "pip", "install", "--python", venv_py, "hf_transfer"] in calls  # hub < 1.0
    assert not pod.shims.calls("pip") and not pod.shims.calls("pip3")
    # order: torch before vLLM, vLLM before FlashInfer
    pip_targets = [c[5] for c in calls if c[:3] == ["uv", "pip", "install"]]
    assert pip_targets.index("torch") < pip_targets.index("-U") < pip_targets.index(
        "flashinfer-python")

    facts = run.facts()
    assert facts["gpu_count"] == "2"
    assert facts["driver_version"] == "550.54.15"
    assert facts["cuda_version"] == "12.4"
    assert facts["python"] == venv_py and facts["venv"] == f"{home}/venv"
    assert facts["vllm_version"] == "0.11.0"
    assert facts["torch_version"] == "2.8.0+cu128"
    assert facts["hf_cache"] == f"{home}/.cache/huggingface"
    assert facts["systemd"] == "no" and facts["docker"] in {"yes", "no"}
    assert facts["env_file"] == str(pod.root / "env.sh")

    env = (pod.root / "env.sh").read_text()
    assert f"export HF_HOME='{home}/.cache/huggingface'" in env
    assert f"_gpumod_path '{home}/venv/bin'" in env
    assert "export HF_HUB_ENABLE_HF_TRANSFER=1" in env
    bashrc = (pod.home / ".bashrc").read_text().splitlines()
    assert bashrc[0] == (f"if [ -r '{pod.root}/env.sh' ]; then . '{pod.root}/env.sh'; fi  "
                         "# gpumod-managed: loads gpumod's env.sh")
    assert bashrc[1:] == ["# user's own bashrc", "alias ll='ls -l'"]
    assert not (pod.root / "setup.pid").exists()


def test_env_file_gives_a_login_shell_the_venv_the_cache_and_the_secrets(pod):
    assert pod.setup().returncode == 0
    probe = subprocess.run(
        ["env", "-i", f"HOME={pod.home}", "PATH=/usr/bin:/bin", "bash", "-c",
         '. "$HOME/.bashrc"; command -v python; printf "%s\\n" "$HF_HOME";'
         ' [ "$HF_TOKEN" = "$1" ] && [ "$PI_API_KEY" = "$2" ] && echo secrets-ok',
         "bash", HF_SECRET, API_SECRET],
        capture_output=True, text=True, check=False)
    assert probe.stdout.splitlines() == [f"{pod.home}/venv/bin/python",
                                         f"{pod.home}/.cache/huggingface", "secrets-ok"]


# ----------------------------------------------------------------------------- idempotency


def test_second_run_skips_every_step_and_changes_nothing(pod):
    first = pod.setup()
    assert first.returncode == 0, first.stdout
    before = tree(pod.home, pod.root)
    bashrc = (pod.home / ".bashrc").read_text()
    env = (pod.root / "env.sh").read_text()
    pod.shims.clear()

    second = pod.setup()
    assert second.returncode == 0, second.stdout
    # detection always runs (ok); every step that could change something skips
    assert second.statuses() == {step: "ok" if step == "gpu" else "skip"
                                 for step in ALL_STEPS}, second.stdout
    assert installer_calls(pod.shims) == []
    assert tree(pod.home, pod.root) == before
    assert (pod.home / ".bashrc").read_text() == bashrc
    assert (pod.root / "env.sh").read_text() == env
    assert second.facts() == first.facts()


def test_existing_venv_is_kept_not_recreated(pod):
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(pod.home / "venv")], check=True)
    marker = pod.home / "venv" / "user-file.txt"
    marker.write_text("mine")
    run = pod.setup()
    assert run.returncode == 0, run.stdout
    kind, text = run.outcomes()["venv"]
    assert kind == "skip" and "kept" in text
    assert marker.read_text() == "mine"
    assert not [c for c in pod.shims.calls("uv") if c[:1] == ["venv"]]


def test_broken_existing_venv_is_not_deleted_and_fails_clearly(pod):
    (pod.home / "venv").mkdir()
    (pod.home / "venv" / "notes.txt").write_text("keep me")
    run = pod.setup()
    assert run.returncode != 0
    kind, text = run.outcomes()["venv"]
    assert kind == "fail" and "move it away" in text
    assert (pod.home / "venv" / "notes.txt").read_text() == "keep me"


def test_env_file_is_replaced_not_appended(pod, tmp_path):
    assert pod.setup("--models-path", str(tmp_path / "models-a")).returncode == 0
    run = pod.setup("--models-path", str(tmp_path / "models-b"))
    assert run.returncode == 0, run.stdout
    env = (pod.root / "env.sh").read_text()
    assert [line for line in env.splitlines() if "HF_HOME" in line] == [
        f"export HF_HOME='{tmp_path}/models-b'"]
    bashrc = (pod.home / ".bashrc").read_text()
    assert bashrc.count("gpumod-managed") == 1
    # without --models-path, a later run keeps the chosen cache
    assert pod.setup().facts()["hf_cache"] == f"{tmp_path}/models-b"



# ----------------------------------------------------------------------------- Ray (--ray)


def test_ray_installs_the_ray_vllm_pins_after_vllm_and_then_skips(pod):
    run = pod.setup("--ray")
    assert run.returncode == 0, run.stdout
    assert run.statuses()["ray"] == "ok"
    py = f"{pod.home}/venv/bin/python"
    assert ["pip", "install", "--python", py, "ray[cgraph]>=2.48.0"] in pod.shims.calls("uv")
    steps = list(run.statuses())
    assert steps.index("vllm") < steps.index("ray") < steps.index("flashinfer")
    assert run.facts()["ray_version"] == "2.48.0"  # the shim installs the floor
    pod.shims.clear()
    again = pod.setup("--ray")
    assert again.outcomes()["ray"] == ("skip", "ray 2.48.0 installed")
    assert installer_calls(pod.shims) == []


def test_no_install_with_ray_only_checks_for_it(pod):
    run = pod.setup("--no-install", "--ray")
    assert run.returncode == 0, run.stdout
    kind, text = run.outcomes()["ray"]
    assert kind == "skip" and "ray not installed (multi-node needs ray[cgraph]>=2.48.0)" in text
    assert installer_calls(pod.shims) == []
    assert run.facts()["ray_version"] == "none"
    assert "ray" not in pod.setup().statuses()  # without --ray there is no Ray step


# ----------------------------------------------------------------------------- vLLM choice


def test_pinned_version_is_one_quoted_requirement(pod):
    run = pod.setup("--vllm", "0.10.1")
    assert run.returncode == 0, run.stdout
    vllm_calls = [c for c in pod.shims.calls("uv") if any(a.startswith("vllm") for a in c)]
    assert vllm_calls == [["pip", "install", "--python", f"{pod.home}/venv/bin/python",
                           "vllm==0.10.1", "--torch-backend=auto"]]
    assert run.facts()["vllm_version"] == "0.10.1"
    pod.shims.clear()
    again = pod.setup("--vllm", "0.10.1")
    assert again.statuses()["vllm"] == "skip"
    assert installer_calls(pod.shims) == []


def test_version_specifier_never_becomes_a_shell_redirect(pod):
    run = pod.setup("--vllm", ">=0.10.0")
    assert run.returncode == 0, run.stdout
    assert ["pip", "install", "--python", f"{pod.home}/venv/bin/python", "vllm>=0.10.0",
            "--torch-backend=auto"] in pod.shims.calls("uv")
    for folder in (pod.root, pod.home, Path("/root")):
        assert not (folder / "=0.10.0").exists()


def test_nightly_uses_the_nightly_index_and_release_goes_back(pod):
    run = pod.setup("--vllm", "nightly")
    assert run.returncode == 0, run.stdout
    py = f"{pod.home}/venv/bin/python"
    assert ["pip", "install", "--python", py, "-U", "vllm", "--torch-backend=auto",
            "--extra-index-url", "https://wheels.vllm.ai/nightly"] in pod.shims.calls("uv")
    assert run.facts()["vllm_version"] == NIGHTLY_VLLM

    pod.shims.clear()
    kept = pod.setup()  # no --vllm: keep what is installed
    assert kept.statuses()["vllm"] == "skip"
    assert kept.facts()["vllm_version"] == NIGHTLY_VLLM

    back = pod.setup("--vllm", "release")
    assert back.statuses()["vllm"] == "ok"
    assert ["pip", "install", "--python", py, "-U", "vllm",
            "--torch-backend=auto"] in pod.shims.calls("uv")
    assert back.facts()["vllm_version"] == "0.11.0"


@pytest.mark.parametrize("value", ["0.10; touch /tmp/gpumod-pwned", "$(id)", "latest",
                                   "0.10.1 extra"])
def test_bad_vllm_value_is_refused_before_anything_runs(pod, value):
    run = pod.setup("--vllm", value)
    assert run.returncode == 2
    assert run.lines[0].startswith("::fail args invalid --vllm value")
    assert pod.shims.records() == []
    assert not Path("/tmp/gpumod-pwned").exists()


def test_unknown_argument_is_a_usage_failure(pod):
    run = pod.setup("--frobnicate")
    assert run.returncode == 2
    assert run.lines[0] == "::fail args unknown argument: --frobnicate"


# ----------------------------------------------------------------------------- mount


def write_mount_file(tmp_path: Path, target: Path) -> Path:
    path = tmp_path / "mount.cmd"
    path.write_text(f"mount -t nfs -o vers=4.1 10.0.0.9:/models {target}\n")
    return path


def test_mount_runs_the_command_and_keeps_an_existing_cache(pod, tmp_path):
    cached = pod.home / ".cache/huggingface/hub/models--org--m/blobs/abc"
    cached.parent.mkdir(parents=True)
    cached.write_text("weights")
    target = tmp_path / "mnt/models"
    mount_file = write_mount_file(tmp_path, target)

    run = pod.setup("--mount-file", str(mount_file))
    assert run.returncode == 0, run.stdout
    assert pod.shims.calls("mount") == [["-t", "nfs", "-o", "vers=4.1", "10.0.0.9:/models",
                                         str(target)]]
    assert run.statuses()["mount"] == "ok"
    assert run.facts()["hf_cache"] == str(target)
    assert cached.read_text() == "weights"  # nothing deleted or moved
    assert not (pod.home / ".cache/huggingface").is_symlink()
    assert "kept the existing cache" in run.stdout
    assert f"export HF_HOME='{target}'" in (pod.root / "env.sh").read_text()
    mount_script = (pod.root / "mount.sh").read_text()
    assert mount_file.read_text().strip() in mount_script

    pod.shims.clear()
    again = pod.setup("--mount-file", str(mount_file))
    assert again.statuses()["mount"] == "skip"
    assert pod.shims.calls("mount") == []
    assert cached.read_text() == "weights"


def test_mount_without_a_cache_links_the_cache_to_models_path(pod, tmp_path):
    target = tmp_path / "mnt/shared"
    run = pod.setup("--mount-file", str(write_mount_file(tmp_path, target)),
                    "--models-path", str(target / "hf"))
    assert run.returncode == 0, run.stdout
    link = pod.home / ".cache/huggingface"
    assert link.is_symlink() and os.readlink(link) == str(target / "hf")
    assert run.facts()["hf_cache"] == str(target / "hf")


def test_failing_mount_command_fails_and_changes_no_stored_state(pod, tmp_path):
    assert pod.setup().returncode == 0
    env_before = (pod.root / "env.sh").read_text()
    pod.shims.fault("mount")
    run = pod.setup("--mount-file", str(write_mount_file(tmp_path, tmp_path / "mnt/x")))
    assert run.returncode != 0
    kind, text = run.outcomes()["mount"]
    assert kind == "fail" and "mount command failed" in text
    assert not (pod.root / "mount.sh").exists()
    assert (pod.root / "env.sh").read_text() == env_before
    assert "::fact" not in run.stdout


# ----------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_argv_ps_output_or_rc_files(pod, tmp_path):
    run = pod.setup("--mount-file", str(write_mount_file(tmp_path, tmp_path / "mnt/m")))
    assert run.returncode == 0, run.stdout
    secrets = (HF_SECRET, API_SECRET)
    snapshots = pod.shims.ps_snapshots()
    assert len(snapshots) > 10
    assert any("pod_setup.sh" in row for snap in snapshots for row in snap)  # taken mid-run
    for secret in secrets:
        assert secret not in run.stdout
        assert secret not in pod.shims.calls_path.read_text()
        assert all(secret not in row for snap in snapshots for row in snap)
    assert all(record["secret_env"] == [] for record in pod.shims.records())
    for path in [p for p in tree(pod.home, pod.root) if Path(p).is_file()]:
        if Path(path).name == "secrets.env":
            continue
        text = Path(path).read_bytes()
        for secret in secrets:
            assert secret.encode() not in text, path
    assert oct((pod.root / "secrets.env").stat().st_mode & 0o777) == "0o600"


def test_secrets_file_with_loose_mode_is_tightened(pod):
    (pod.root / "secrets.env").chmod(0o644)
    run = pod.setup()
    assert run.statuses()["secrets"] == "ok"
    assert oct((pod.root / "secrets.env").stat().st_mode & 0o777) == "0o600"
    assert HF_SECRET not in run.stdout


# ----------------------------------------------------------------------------- failures


def test_failing_install_step_prints_fail_and_stops(pod):
    pod.shims.fault("vllm")
    run = pod.setup()
    assert run.returncode != 0
    statuses = run.statuses()
    assert statuses["vllm"] == "fail"
    assert "flashinfer" not in statuses and "env" not in statuses and "bashrc" not in statuses
    assert "::fact" not in run.stdout
    assert "simulated" in run.stdout  # the installer's own message is shown as detail
    assert not (pod.root / "setup.pid").exists()


def test_best_effort_flashinfer_failure_does_not_stop_setup(pod):
    pod.shims.fault("flashinfer-python")
    run = pod.setup()
    assert run.returncode == 0, run.stdout
    kind, text = run.outcomes()["flashinfer"]
    assert kind == "skip" and "best effort" in text
    assert run.statuses()["bashrc"] == "ok"


def test_no_nvidia_smi_is_a_clear_failure(sshd, tmp_path):
    pod = Pod(sshd, tmp_path, nvidia_smi=False)
    for flags in ((), ("--no-install",)):
        run = pod.setup(*flags)
        assert run.returncode != 0
        kind, text = run.outcomes()["gpu"]
        assert kind == "fail" and "nvidia-smi not found" in text
        assert list(run.statuses()) == ["gpu"]
    assert installer_calls(pod.shims) == []
    assert list(pod.home.iterdir()) == []


def test_no_install_detects_only_and_changes_nothing_outside_root(pod):
    before_home = tree(pod.home)
    run = pod.setup("--no-install")
    assert run.returncode == 0, run.stdout
    statuses = run.statuses()
    assert statuses.pop("gpu") == "ok"
    assert set(statuses.values()) == {"skip"}
    assert installer_calls(pod.shims) == []
    assert tree(pod.home) == before_home
    assert sorted(p.name for p in pod.root.iterdir()) == ["pod_setup.sh", "secrets.env"]
    facts = run.facts()
    assert facts["gpu_count"] == "2" and facts["python"] == "none"
    assert facts["vllm_version"] == "none"


def test_interrupt_stops_the_script_and_its_installer(pod):
    pod.shims.fault("torch", kind="hang")
    seen: list[str] = []
    hang_pid_file = pod.shims.state_dir / "hang.pid"
    with pod.transport.stream(["setsid", "-w", *pod.argv()]) as out:
        lines = out.iter_lines()
        for line in lines:
            seen.append(line)
            if line.startswith("Downloading torch"):
                break
        deadline = time.monotonic() + 20
        while not hang_pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        hang_pid = int(hang_pid_file.read_text())
        pid = int((pod.root / "setup.pid").read_text())
        # signal only the script (not its group): its trap must stop the installer itself
        os.kill(pid, 15)
        seen.extend(lines)
    output = "\n".join(seen)
    assert out.returncode not in (0, None)
    assert "::fail torch interrupted by SIGTERM" in output
    deadline = time.monotonic() + 10
    while Path(f"/proc/{hang_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{hang_pid}").exists()
    assert not (pod.root / "setup.pid").exists()
    assert "::fact" not in output


def test_a_second_setup_while_one_runs_is_refused(pod):
    pod.shims.fault("torch", kind="hang")
    with pod.transport.stream(["setsid", "-w", *pod.argv()]) as first:
        try:
            deadline = time.monotonic() + 20
            while not (pod.shims.state_dir / "hang.pid").exists() and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            run = pod.setup()
            assert run.returncode != 0
            assert "another setup is already running" in run.stdout
        finally:
            pid = int((pod.root / "setup.pid").read_text())
            os.killpg(pid, 15)
            for _ in first.iter_lines():
                pass


# ----------------------------------------------------------------------------- shellcheck


def test_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        require_real("shellcheck", "it is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_ships_as_package_data():
    from importlib import resources

    text = resources.files("gpumod").joinpath("scripts/pod_setup.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert json.dumps(text)  # plain text, uploadable through stdin


def test_nvidia_smi_that_cannot_reach_the_driver_fails_the_gpu_step(pod):
    pod.shims.fault("nvidia-smi")
    run = pod.setup()
    assert run.returncode == 1
    kind, text = run.outcomes()["gpu"]
    assert kind == "fail" and text.startswith("nvidia-smi failed: nvidia-smi: simulated failure")
    assert installer_calls(pod.shims) == []
