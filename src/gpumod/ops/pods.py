"""Pod registration and bootstrap (`pi pods setup`), and local first-time set-up.

Setup order: parse and validate everything locally, reach the host, detect
GPUs, upload the bootstrap script and the secrets (stdin, 0600 files), run
the script with live progress, and only then record the pod, in one
transaction. A failure or Ctrl+C at any step records nothing new and keeps
whatever was stored before.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from gpumod import validate
from gpumod.errors import (
    Cancelled,
    ConfigError,
    ConflictError,
    GpumodError,
    NotFoundError,
    RemoteCommandError,
    UsageError,
)
from gpumod.hosts import gpus as gpuinfo
from gpumod.hosts.model import GPU, Host
from gpumod.hosts.sshcmd import parse_ssh_command
from gpumod.hosts.transports.base import Transport
from gpumod.hosts.transports.ssh import SSHTransport
from gpumod.ops import hosts as hostops
from gpumod.store.db import Store

SECRET_VARS = ("HF_TOKEN", "PI_API_KEY")
VLLM_CHANNELS = ("release", "nightly")

# Resolve gpumod's folder on the host once; tests set GPUMOD_REMOTE_HOME.
_ROOT_SCRIPT = 'printf "%s\\n" "${GPUMOD_REMOTE_HOME:-$HOME/.gpumod}"'


@dataclass
class SetupEvent:
    """One line of progress from the bootstrap script."""

    kind: str  # step | ok | skip | fail | detail | fact
    step: str = ""
    text: str = ""


@dataclass
class SetupResult:
    host: Host
    created: bool
    became_active: bool
    facts: dict[str, str] = field(default_factory=dict)


def validate_vllm_channel(value: str | None) -> str | None:
    if value is None or value in VLLM_CHANNELS:
        return value
    # A version pin: digits, dots and PEP 440 suffixes only; no operators, no spaces.
    import re

    if re.fullmatch(r"\d+(\.\d+){1,3}([a-z]+\d*)?(\.post\d+|\.dev\d+)?", value):
        return value
    raise UsageError(f"invalid --vllm value {value!r}",
                     hint="use release, nightly, or a version such as 0.10.1")


def read_secrets(required: bool) -> dict[str, str]:
    secrets = {var: os.environ[var] for var in SECRET_VARS if os.environ.get(var)}
    missing = [var for var in SECRET_VARS if var not in secrets]
    if required and missing:
        raise ConfigError(f"{' and '.join(missing)} must be set for pod setup",
                          hint="export them first (or use --no-install for a prepared machine)")
    return secrets


def setup_pod(
    store: Store,
    name: str,
    ssh_command: str,
    *,
    mount: str | None = None,
    models_path: str | None = None,
    vllm: str | None = None,
    no_install: bool = False,
    ray: bool = False,
    on_event: Callable[[SetupEvent], None] = lambda e: None,
) -> SetupResult:
    validate.name(name, "pod name")
    if name == hostops.LOCAL:
        raise UsageError("'local' is this machine and needs no setup", hint="use `gpumod init`")
    target = parse_ssh_command(ssh_command)
    vllm = validate_vllm_channel(vllm)
    if models_path is not None:
        validate.no_control_chars(models_path, "--models-path")
        if not models_path.startswith(("/", "~")):
            raise UsageError(f"--models-path must be absolute, got {models_path!r}",
                             hint="e.g. --models-path /workspace/models")
    if mount is not None:
        validate.no_control_chars(mount, "--mount")
        if not mount.strip():
            raise UsageError("--mount is empty", hint='e.g. --mount "mount -t nfs host:/x /mnt/x"')
    secrets = read_secrets(required=not no_install)

    existing: Host | None = None
    try:
        existing = hostops.get_host(store, name)
    except NotFoundError:
        pass
    if existing is not None and parse_ssh_command(existing.ssh_command or "").destination != \
            target.destination:
        raise ConflictError(
            f"pod {name!r} already exists for {existing.ssh_command!r}",
            hint=f"choose another name, or `pi pods remove {name}` first",
        )

    transport = SSHTransport(target, label=f"pod {name}")
    on_event(SetupEvent("step", "connect", f"connecting: {target.display}"))
    root = transport.run(["sh", "-c", _ROOT_SCRIPT], timeout=30).check(
        f"pod {name}: reading the home folder").stdout.strip()
    if not root.startswith("/"):
        raise RemoteCommandError(f"pod {name}: unexpected home folder {root!r}", returncode=0)
    on_event(SetupEvent("ok", "connect"))

    on_event(SetupEvent("step", "gpus", "detecting GPUs (nvidia-smi)"))
    snap = gpuinfo.snapshot(transport)
    if snap is None:
        raise RemoteCommandError(
            f"pod {name}: nvidia-smi not found on the host", returncode=127,
            hint="use an image with the NVIDIA driver (nvidia-smi must work over SSH)")
    detected = snap.inventory()
    on_event(SetupEvent("ok", "gpus", ", ".join(f"{g.index}: {g.name} {g.memory_mib} MiB"
                                                for g in detected) or "none"))

    script_path = posixpath.join(root, "pod_setup.sh")
    _upload(transport, root, "pod_setup.sh", _bootstrap_script(), mode="755")
    if secrets:
        body = "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(secrets.items()))
        _upload(transport, root, "secrets.env", body, mode="600")
    # Without --vllm the script keeps whatever vLLM is installed (a nightly stays nightly).
    args = ["--vllm", vllm] if vllm else []
    if models_path:
        args += ["--models-path", models_path]
    if mount:
        _upload(transport, root, "mount.cmd", mount + "\n", mode="600")
        args += ["--mount-file", posixpath.join(root, "mount.cmd")]
    if ray:  # one model across pods: Ray beside vLLM (the version vLLM pins)
        args.append("--ray")
    if no_install:
        args.append("--no-install")

    facts = run_bootstrap(transport, root, ["bash", script_path, *args], on_event)

    host = Host(
        name=name, kind="ssh", ssh_command=ssh_command, ssh_argv=tuple(target.argv()),
        address=_address(existing, transport), port_map=existing.port_map if existing else {},
        root=root, models_path=models_path or (existing.models_path if existing else None),
        mount_command=mount or (existing.mount_command if existing else None),
        vllm_channel=vllm or (existing.vllm_channel if existing else "release"),
        engine_env=_engine_env(facts), capabilities=_capabilities(facts), gpus=tuple(detected),
    )
    hostops.save_host(store, host, replace=existing is not None)
    became_active = False
    if hostops.active_host_name(store) == hostops.LOCAL:
        hostops.set_active(store, name)
        became_active = True
    store.log_event("pod.setup", host=name, detail="no-install" if no_install else "install")
    return SetupResult(hostops.get_host(store, name), existing is None, became_active, facts)


def _address(existing: Host | None, transport: SSHTransport) -> str:
    if existing is not None and existing.address:
        return existing.address
    return transport.resolved_hostname()


def _bootstrap_script() -> str:
    return resources.files("gpumod").joinpath("scripts/pod_setup.sh").read_text()


def _upload(transport: Transport, root: str, filename: str, body: str, *, mode: str) -> None:
    """Write a file on the host through stdin, atomically, with the given mode."""
    script = ('set -e; umask 077; mkdir -p "$1"; tmp="$1/.$2.tmp.$$"; cat > "$tmp"; '
              'chmod "$3" "$tmp"; mv -f "$tmp" "$1/$2"')
    transport.run(["sh", "-c", script, "sh", root, filename, mode], input=body,
                  timeout=60).check(f"{transport.label}: writing {filename}")


def run_bootstrap(transport: Transport, root: str, argv: list[str],
                  on_event: Callable[[SetupEvent], None]) -> dict[str, str]:
    """Run the bootstrap script with live progress; Ctrl+C kills it on the host."""
    facts: dict[str, str] = {}
    failed: SetupEvent | None = None
    tail: list[str] = []
    try:
        with transport.stream(["setsid", "-w", *argv]) as out:
            for line in out.iter_lines():
                event = parse_progress(line)
                if event.kind == "fact":
                    facts[event.step] = event.text
                    continue
                if event.kind == "fail":
                    failed = event
                if event.kind == "detail":
                    tail = [*tail[-19:], line]
                on_event(event)
        code = out.returncode
    except KeyboardInterrupt:
        problem = _kill_remote_setup(transport, root)
        if problem:
            raise Cancelled(f"{transport.label}: setup cancelled and nothing was recorded; "
                            f"the remote script could not be stopped ({problem})",
                            hint=f"it may still run there; its process id is in "
                                 f"{root}/setup.pid") from None
        raise Cancelled(f"{transport.label}: setup cancelled; the remote script was stopped "
                        "and nothing was recorded") from None
    if code != 0:
        if failed is not None:
            reason = f"step {failed.step} failed: {failed.text}"
        else:
            reason = (tail[-1] if tail else f"exit code {code}")
        raise RemoteCommandError(f"{transport.label}: setup failed: {reason}", returncode=code,
                                 stderr="\n".join(tail),
                                 hint="fix the cause and run the same setup again (it is safe)")
    return facts


def _kill_remote_setup(transport: Transport, root: str) -> str | None:
    """Stop the setup script's process group on the host; why it could not, or None."""
    script = ('pid=$(cat "$1/setup.pid" 2>/dev/null) || exit 0; '
              'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; '
              'for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- "-$pid" 2>/dev/null || break; '
              'sleep 0.5; done; kill -KILL -- "-$pid" 2>/dev/null; rm -f "$1/setup.pid"; exit 0')
    try:
        # bash, not sh: dash's kill does not take `--` before a process group.
        result = transport.run(["bash", "-c", script, "bash", root], timeout=30)
    except GpumodError as exc:  # the pod dropped, the command timed out
        return exc.message
    return None if result.ok else f"exit {result.returncode}: {result.stderr.strip()[:200]}"


def parse_progress(line: str) -> SetupEvent:
    """`::step id text`, `::ok id`, `::skip id why`, `::fail id why`, `::fact key value`."""
    if line.startswith("::"):
        head, _, rest = line[2:].partition(" ")
        if head in {"step", "ok", "skip", "fail", "fact"}:
            step, _, text = rest.partition(" ")
            return SetupEvent(head, step, text)
    return SetupEvent("detail", "", line)


def _engine_env(facts: dict[str, str]) -> dict[str, object]:
    env: dict[str, object] = {}
    # The setup script reports a missing fact as "none": that is absent, not a path.
    present = {k: v for k, v in facts.items() if v and v != "none"}
    for key in ("venv", "python", "vllm_version", "torch_version", "ray_version", "hf_cache",
                "cuda_version", "driver_version"):
        if present.get(key):
            env[key] = present[key]
    if present.get("venv"):
        env["bin_dirs"] = [posixpath.join(present["venv"], "bin")]
    return env


def _capabilities(facts: dict[str, str]) -> dict[str, object]:
    return {"nvidia_smi": True, "systemd": facts.get("systemd") == "yes",
            "docker": facts.get("docker") == "yes"}


# -- local -------------------------------------------------------------------


@dataclass
class InitResult:
    host: Host
    gpus_found: bool
    database: str


def init_local(store: Store) -> InitResult:
    """Detect this machine's GPUs and capabilities; safe to run again."""
    from gpumod import paths
    from gpumod.hosts.transports.local import LocalTransport

    transport = LocalTransport()
    snap = gpuinfo.snapshot(transport)
    detected: list[GPU] = snap.inventory() if snap else []
    capabilities = {
        "nvidia_smi": snap is not None,
        "systemd": os.path.isdir("/run/systemd/system"),
        "docker": _which("docker"),
    }
    engine_env: dict[str, object] = {}
    host = hostops.update_local(store, detected, capabilities, engine_env)
    store.log_event("init", host="local", detail=f"{len(detected)} GPU(s)")
    return InitResult(host, snap is not None, str(paths.database_path()))


def _which(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None


def run_user_command(transport: Transport, command: str) -> int:
    """`pi ssh NAME "CMD"`: run with this terminal's stdio, return the real exit code."""
    argv = transport.user_command_argv(command)
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 130
