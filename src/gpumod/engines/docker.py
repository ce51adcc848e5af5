"""Docker: a service defined by an image, ports, env, volumes and a command.

The container settings live in ``spec.extra["docker"]``::

    {"image": "ollama/ollama:0.5.7", "port": 11434,            # container port served
     "ports": {"9090": 9091},                                 # more: container -> host
     "env": {"OLLAMA_KEEP_ALIVE": "5m"},
     "volumes": ["/srv/models:/models:ro", "ollama-data:/root/.ollama"],
     "command": ["serve"], "network": "bridge", "shm_size": "8g"}

Controls (applied before anything runs, for both the Docker SDK path and the
``docker run`` argv used under the process or systemd supervisor):

- privileged mode is refused, and so are the settings that amount to it
  (``cap_add``, ``devices``, ``pid``/``ipc`` host, ``security_opt``: unknown keys are errors);
- host, macvlan and ipvlan networks are refused (by name, and by driver through the SDK);
- unsafe bind mounts are refused: ``/``, ``/etc``, ``/proc``, ``/sys``, ``/dev``, ``/boot``,
  ``/root``, system binaries and libraries, the docker socket and ``/var/lib/docker``, and any
  folder that contains one of them;
- environment keys must be identifiers (no ``=``), values one line.

Secrets reach the container by name only on the command line (``-e API_KEY``: the docker
CLI copies the value from its own environment, which the supervisor fills from the 0600
env file); through the SDK they travel in the API request, never in an argv.

The Docker SDK supervisor (containers driven through the Docker engine's API instead of
a ``docker run`` process) is :mod:`gpumod.supervise.docker`.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.engines.base import Engine, HealthCheck
from gpumod.errors import UsageError
from gpumod.spec import ServiceSpec

ALLOWED_KEYS = {"image", "port", "ports", "env", "volumes", "command", "network", "shm_size",
                "pull", "user", "workdir"}
FORBIDDEN_KEYS = {
    "privileged": "privileged mode gives the container the whole host",
    "cap_add": "added capabilities weaken the container's isolation",
    "devices": "raw devices are not passed through; GPUs come from the service's --gpus",
    "pid": "sharing the host's process namespace is not allowed",
    "pid_mode": "sharing the host's process namespace is not allowed",
    "ipc": "sharing the host's IPC namespace is not allowed",
    "ipc_mode": "sharing the host's IPC namespace is not allowed",
    "security_opt": "security options (seccomp/apparmor off) are not allowed",
    "network_mode": "use 'network' (host and macvlan networks are refused)",
    "userns_mode": "the host user namespace is not allowed",
}
BLOCKED_NETWORKS = {"host", "macvlan", "ipvlan"}
BLOCKED_DRIVERS = {"host", "macvlan", "ipvlan"}
# Exactly these, and everything inside them.
BLOCKED_TREES = ("/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/bin", "/sbin", "/lib",
                 "/lib64", "/usr/bin", "/usr/sbin", "/usr/lib", "/var/lib/docker",
                 "/var/run/docker.sock", "/run/docker.sock", "/run/containerd",
                 "/var/run/containerd")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*"
                    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[a-f0-9]{64})?")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SIZE = re.compile(r"\d+[bkmgBKMG]?")
LABEL = "gpumod.service"


@dataclass(frozen=True)
class Mount:
    source: str          # absolute host path, or a named volume
    target: str          # absolute path in the container
    read_only: bool = False

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class DockerConfig:
    image: str
    port: int                                   # container port the service answers on
    ports: dict[int, int] = field(default_factory=dict)   # extra: container -> host
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[Mount, ...] = ()
    command: tuple[str, ...] = ()
    network: str | None = None
    shm_size: str | None = None
    user: str | None = None
    workdir: str | None = None
    pull: bool = True


def _bad(message: str, hint: str | None = None) -> UsageError:
    return UsageError(f"docker: {message}", hint=hint)


def check_mount_source(source: str) -> str:
    """Refuse bind mounts of system folders, the docker socket, and anything above them."""
    if not source.startswith("/"):
        if not _VOLUME_NAME.fullmatch(source):
            raise _bad(f"volume source {source!r} is neither an absolute path nor a volume name")
        return source
    validate.no_control_chars(source, "volume path")
    norm = posixpath.normpath(source)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise _bad("mounting the host's root folder '/' is not allowed")
    for tree in BLOCKED_TREES:
        if norm == tree or norm.startswith(tree + "/"):
            raise _bad(f"mounting {source!r} is not allowed (inside {tree})",
                       hint="mount a data folder such as /srv/models instead")
        if tree.startswith(norm + "/"):
            raise _bad(f"mounting {source!r} is not allowed (it contains {tree})",
                       hint="mount the specific data folder instead")
    return norm


def _mount(item: Any) -> Mount:
    if isinstance(item, Mapping):
        source, target = str(item.get("source", "")), str(item.get("target", ""))
        read_only = bool(item.get("read_only", False))
        extra = set(item) - {"source", "target", "read_only"}
        if extra:
            raise _bad(f"unknown volume keys: {', '.join(sorted(extra))}")
    elif isinstance(item, str):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise _bad(f"volume {item!r} must be SOURCE:TARGET[:ro|rw]")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in {"ro", "rw"}:
            raise _bad(f"volume mode {mode!r} must be ro or rw")
        read_only = mode == "ro"
    else:
        raise _bad(f"volume {item!r} must be a string or a mapping")
    if not target.startswith("/") or any(c in target for c in ":\n\r\x00"):
        raise _bad(f"volume target {target!r} must be an absolute path in the container")
    return Mount(check_mount_source(source), posixpath.normpath(target), read_only)


def _port(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _bad(f"{what} {value!r} is not a port number") from None
    if not 1 <= number <= 65535:
        raise _bad(f"{what} {number} is out of range (1-65535)")
    return number


def check_env(env: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise _bad(f"invalid environment variable name {key!r}",
                       hint="use letters, digits and '_' (no '='), not starting with a digit")
        text = "" if value is None else str(value)
        validate.no_control_chars(text, f"environment value of {key}")
        out[key] = text
    return out


def check_network(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not _VOLUME_NAME.fullmatch(name):
        raise _bad(f"invalid network name {name!r}")
    if name.lower() in BLOCKED_NETWORKS or name.startswith("container:"):
        raise _bad(f"the {name!r} network is not allowed",
                   hint="use the default bridge or a user-defined bridge network")
    return name


def parse_config(raw: Any) -> DockerConfig:
    """Validate ``spec.extra["docker"]`` and apply every control."""
    if not isinstance(raw, Mapping):
        raise _bad("the service has no docker settings (image, port, ...)",
                   hint="add them with a preset, or --image/--container-port")
    for key in raw:
        if key in FORBIDDEN_KEYS:
            raise _bad(f"'{key}' is not allowed: {FORBIDDEN_KEYS[key]}")
        if key not in ALLOWED_KEYS:
            raise _bad(f"unknown setting {key!r}", hint=f"known: {', '.join(sorted(ALLOWED_KEYS))}")
    image = raw.get("image")
    if not isinstance(image, str) or not _IMAGE.fullmatch(image) or ".." in image:
        raise _bad(f"invalid image reference {image!r}")
    command_raw = raw.get("command") or ()
    if isinstance(command_raw, str):
        command = tuple(shlex.split(command_raw))
    elif isinstance(command_raw, list | tuple):
        command = tuple(str(c) for c in command_raw)
    else:
        raise _bad("command must be a list of strings or a string")
    for word in command:
        validate.no_control_chars(word, "docker command argument")
    ports_raw = raw.get("ports") or {}
    if not isinstance(ports_raw, Mapping):
        raise _bad("ports must map container ports to host ports")
    ports = {_port(c, "container port"): _port(h, "host port") for c, h in ports_raw.items()}
    env_raw = raw.get("env") or {}
    if not isinstance(env_raw, Mapping):
        raise _bad("env must be a mapping of NAME: value")
    volumes_raw = raw.get("volumes") or []
    if not isinstance(volumes_raw, list | tuple):
        raise _bad("volumes must be a list")
    shm = raw.get("shm_size")
    if shm is not None and not _SIZE.fullmatch(str(shm)):
        raise _bad(f"invalid shm_size {shm!r}")
    for key in ("user", "workdir"):
        if raw.get(key) is not None:
            validate.no_control_chars(str(raw[key]), key)
    return DockerConfig(
        image=image, port=_port(raw.get("port", 8000), "container port"), ports=ports,
        env=check_env(env_raw), volumes=tuple(_mount(v) for v in volumes_raw), command=command,
        network=check_network(raw.get("network")), shm_size=str(shm) if shm else None,
        user=str(raw["user"]) if raw.get("user") is not None else None,
        workdir=str(raw["workdir"]) if raw.get("workdir") is not None else None,
        pull=bool(raw.get("pull", True)))


def container_name(spec_name: str) -> str:
    return f"gpumod-{validate.name(spec_name, 'service name')}"


class DockerEngine(Engine):
    """Containers through the docker CLI (process/systemd supervisors) or the SDK."""

    name = "docker"
    binary = "docker"
    secret_env = "API_KEY"  # noqa: S105 - a variable name, not a secret
    health = HealthCheck("/health", ok_codes=(200,), loading_codes=(503,))
    serves_port_itself = False  # docker's proxy holds the published port, not the group

    def config(self, spec: ServiceSpec) -> DockerConfig:
        return parse_config(spec.extra.get("docker"))

    def validate(self, spec: ServiceSpec) -> None:
        self.config(spec)

    def env(self, spec: ServiceSpec) -> dict[str, str]:
        # The docker CLI's own environment: nothing of the container's goes here.
        return {}

    def secret_env_for(self, api_key: str) -> dict[str, str]:
        return {"API_KEY": api_key, "PI_API_KEY": api_key}

    def argv(self, spec: ServiceSpec, *, bind: str, model_path: str | None = None,
             binary: str | None = None, secret_names: tuple[str, ...] = ("API_KEY",
                                                                         "PI_API_KEY"),
             ) -> list[str]:
        cfg = self.config(spec)
        argv = [binary or self.binary, "run", "--rm", "--name", container_name(spec.name),
                "--label", f"{LABEL}={spec.name}", "--init",
                "-p", f"{bind}:{spec.port}:{cfg.port}"]
        for cport, hport in sorted(cfg.ports.items()):
            argv += ["-p", f"{bind}:{hport}:{cport}"]
        if spec.gpus:
            argv += ["--gpus", "device=" + ",".join(str(g) for g in spec.gpus)]
        if cfg.network:
            argv += ["--network", cfg.network]
        if cfg.shm_size:
            argv += ["--shm-size", cfg.shm_size]
        if cfg.user:
            argv += ["--user", cfg.user]
        if cfg.workdir:
            argv += ["--workdir", cfg.workdir]
        env = {**check_env(spec.env), **cfg.env}
        for key, value in sorted(env.items()):
            argv += ["-e", f"{key}={value}"]
        for key in secret_names:  # name only: the value comes from the CLI's environment
            argv += ["-e", key]
        for mount in cfg.volumes:
            argv += ["-v", mount.spec]
        argv.append(cfg.image)
        argv += list(cfg.command)
        return argv

    def run_kwargs(self, spec: ServiceSpec, *, bind: str,
                   secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``DockerClient.containers.run`` (detached)."""
        cfg = self.config(spec)
        ports: dict[str, Any] = {f"{cfg.port}/tcp": (bind, spec.port)}
        for cport, hport in cfg.ports.items():
            ports[f"{cport}/tcp"] = (bind, hport)
        env = {**check_env(spec.env), **cfg.env, **check_env(dict(secrets or {}))}
        kwargs: dict[str, Any] = {
            "image": cfg.image, "command": list(cfg.command) or None,
            "name": container_name(spec.name), "detach": True, "environment": env,
            "ports": ports, "labels": {LABEL: spec.name}, "privileged": False, "init": True,
            "volumes": {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
                        for m in cfg.volumes},
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 5},
        }
        if cfg.network:
            kwargs["network"] = cfg.network
        if cfg.shm_size:
            kwargs["shm_size"] = cfg.shm_size
        if cfg.user:
            kwargs["user"] = cfg.user
        if cfg.workdir:
            kwargs["working_dir"] = cfg.workdir
        if spec.gpus:
            from docker.types import DeviceRequest

            kwargs["device_requests"] = [DeviceRequest(
                device_ids=[str(g) for g in spec.gpus], capabilities=[["gpu"]])]
        return kwargs
