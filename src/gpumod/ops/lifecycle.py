"""Service lifecycle: define, start (dependencies first, each healthy), stop (dependents
first), restart, state; and the host lock that mode switches and service commands share.

A service's runtime pieces come together in :class:`Runtime`: its host and
transport, engine driver (``gpumod.engines``), launch plan (argv, environment and
folder), supervisor (process, systemd or docker), HTTP endpoint on its host and
sleep capability. The deploy engineer's engines and process supervisor are used
as they are; vLLM services with a sleep mode get ``--enable-sleep-mode``,
``VLLM_SERVER_DEV_MODE=1`` and a loopback bind; llama.cpp services with
``sleep: router`` run ``llama-server`` in router mode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumod import paths, validate
from gpumod.engines.base import Engine, get_engine
from gpumod.engines.sleep import (
    Endpoint,
    SleepCapable,
    canary,
    capability_for,
    prepare_vllm_launch,
    router_argv,
    wait_healthy,
)
from gpumod.errors import (
    ConfigError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.spec import ENGINES, SLEEP_MODES, ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor

Progress = Callable[[str], None]
ACTIVE_STATES = {"running", "sleeping", "starting"}
DEFAULT_HEALTH_TIMEOUT = 600.0


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- host lock


@contextlib.contextmanager
def host_lock(host: str, *, wait: float = 5.0, what: str = "a mode switch") -> Iterator[None]:
    """Exclusive per-host lock (fcntl on $GPUMOD_HOME/locks/HOST.lock).

    Waits up to `wait` seconds, then refuses with a clear ConflictError naming the holder.
    """
    folder = paths.ensure_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{validate.name(host, 'pod name')}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise ConflictError(
                        f"another gpumod operation is changing services on {host} "
                        f"({holder or 'unknown holder'})",
                        hint=f"wait for it to finish, then retry {what}") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- records


def get_service(store: Store, name: str) -> ServiceSpec:
    from gpumod.ops.services import get_service as _get

    return _get(store, name)


def list_services(store: Store, host: str | None = None) -> list[ServiceSpec]:
    from gpumod.ops.services import list_services as _list

    return _list(store, host)


def save_state(store: Store, name: str, state: str, pid: int | None = None,
               *, keep_pid: bool = False) -> None:
    with store.transaction() as db:
        if keep_pid:
            db.execute("UPDATE services SET state = ?, updated_at = datetime('now') "
                       "WHERE name = ?", (state, name))
        else:
            db.execute("UPDATE services SET state = ?, pid = ?, updated_at = datetime('now') "
                       "WHERE name = ?", (state, pid, name))


def add_service(store: Store, spec: ServiceSpec) -> ServiceSpec:
    """Insert a new service definition (state 'stopped'); name and port must be free."""
    validate.name(spec.name, "service name")
    validate.port(spec.port)
    if spec.engine not in ENGINES:
        raise UsageError(f"unknown engine {spec.engine!r}", hint=f"use {', '.join(ENGINES)}")
    if spec.sleep_mode not in SLEEP_MODES:
        raise UsageError(f"unknown sleep mode {spec.sleep_mode!r}",
                         hint=f"use {', '.join(SLEEP_MODES)}")
    if spec.sleep_mode in {"l1", "l2"} and spec.engine != "vllm":
        raise UsageError(f"sleep {spec.sleep_mode} is vLLM's; {spec.engine} cannot use it",
                         hint="use --sleep router for llama.cpp, or --sleep none")
    if spec.sleep_mode == "router" and spec.engine != "llamacpp":
        raise UsageError("--sleep router is llama.cpp's router mode")
    for dep in spec.depends_on:
        validate.name(dep, "dependency")
        if dep == spec.name:
            raise UsageError(f"{spec.name} cannot depend on itself")
    for key, value in spec.env.items():
        validate.no_control_chars(f"{key}={value}", "environment")
    for arg in spec.args:
        validate.no_control_chars(arg, "argument")
    engine = get_engine(spec.engine)
    if spec.sleep_mode != "router":
        engine.validate(spec)
    spec = spec.with_(state="stopped", pid=None)
    with store.transaction() as db:
        row = db.execute("SELECT host FROM services WHERE name = ?", (spec.name,)).fetchone()
        if row:
            raise ConflictError(f"a service named {spec.name!r} already exists (on {row[0]})",
                                hint="pick another name, or remove it first")
        clash = db.execute("SELECT name FROM services WHERE host = ? AND port = ?",
                           (spec.host, spec.port)).fetchone()
        if clash:
            raise ConflictError(f"port {spec.port} on {spec.host} is already used by "
                                f"{clash[0]}", hint="pick another --port")
        for dep in spec.depends_on:
            found = db.execute("SELECT host FROM services WHERE name = ?", (dep,)).fetchone()
            if found is None:
                raise NotFoundError(f"dependency {dep!r} is not a service",
                                    hint="add it first")
            if found[0] != spec.host:
                raise UsageError(f"dependency {dep!r} runs on {found[0]}, not {spec.host}")
        values = spec.row_values()
        db.execute(f"INSERT INTO services ({', '.join(values)}) "  # noqa: S608 - our columns
                   f"VALUES ({', '.join('?' for _ in values)})", tuple(values.values()))
    _check_cycles(list_services(store, spec.host))
    return spec


def next_free_port(store: Store, host: str, start: int = 8001) -> int:
    taken = {r["port"] for r in store.query("SELECT port FROM services WHERE host = ?", (host,))}
    for port in range(start, 65535):
        if port not in taken:
            return port
    raise ConflictError(f"no free port on {host}")


# ---------------------------------------------------------------------------- ordering


def _check_cycles(specs: Sequence[ServiceSpec]) -> None:
    dependency_order(specs, list(specs))


def dependency_order(all_specs: Sequence[ServiceSpec],
                     wanted: Iterable[ServiceSpec]) -> list[ServiceSpec]:
    """wanted + their dependencies, dependencies first (stable by name)."""
    by_name = {s.name: s for s in all_specs}
    out: list[ServiceSpec] = []
    state: dict[str, int] = {}

    def visit(spec: ServiceSpec, chain: tuple[str, ...]) -> None:
        mark = state.get(spec.name)
        if mark == 2:
            return
        if mark == 1:
            raise ConfigError("dependency cycle: " + " -> ".join((*chain, spec.name)))
        state[spec.name] = 1
        for dep in sorted(spec.depends_on):
            if dep not in by_name:
                raise NotFoundError(f"{spec.name} depends on {dep!r}, which is not a service "
                                    f"on {spec.host}")
            visit(by_name[dep], (*chain, spec.name))
        state[spec.name] = 2
        out.append(spec)

    for spec in sorted(wanted, key=lambda s: s.name):
        visit(spec, ())
    return out


def dependents(all_specs: Sequence[ServiceSpec], name: str) -> list[ServiceSpec]:
    """Services that (transitively) depend on `name`, dependents first (stop order)."""
    found: dict[str, ServiceSpec] = {}
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for spec in all_specs:
            if current in spec.depends_on and spec.name not in found:
                found[spec.name] = spec
                frontier.append(spec.name)
    return list(reversed(dependency_order(all_specs, found.values())))


# ---------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    spec: ServiceSpec
    host: Host
    transport: Transport
    engine: Engine
    plan: LaunchPlan
    supervisor: Supervisor
    endpoint: Endpoint
    sleep: SleepCapable | None
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def health_path(self) -> str:
        return self.spec.health_path or "/health"

    def alive(self) -> bool:
        return self.supervisor.state(self.plan) == ProcessState.RUNNING

    def pid(self) -> int | None:
        """The service's main pid on its host right now (None when not running)."""
        name = self.supervisor.name
        if name == "process":
            result = self.transport.run(["cat", self.plan.pid_path], timeout=20)
            text = result.stdout.strip()
            return int(text) if result.ok and text.isdigit() else None
        if name == "systemd":
            from gpumod.supervise.systemd import unit_name

            props = self.supervisor.properties(unit_name(self.spec.name))  # type: ignore[attr-defined]
            pid = props.get("MainPID", "0")
            return int(pid) if pid.isdigit() and int(pid) > 0 else None
        return self.spec.pid


def bind_address(spec: ServiceSpec) -> str:
    if spec.engine == "vllm" and spec.sleep_mode in {"l1", "l2"}:
        return "127.0.0.1"  # dev endpoints have no auth
    bind = str(spec.extra.get("bind") or "127.0.0.1")
    if bind not in {"127.0.0.1", "0.0.0.0", "::1", "::", "localhost"}:  # noqa: S104
        raise UsageError(f"invalid bind address {bind!r}")
    return bind


def launch_plan(spec: ServiceSpec, host: Host, engine: Engine | None = None) -> LaunchPlan:
    engine = engine or get_engine(spec.engine)
    service_dir = posixpath.join(hosts_ops.host_root(host), "services", spec.name)
    bind = bind_address(spec)
    binary = (host.engine_env or {}).get(f"{spec.engine}_binary") or None
    if spec.engine == "llamacpp" and spec.sleep_mode == "router":
        router = spec.extra.get("router") or {}
        argv = router_argv(binary or "llama-server", spec.model, bind=bind, port=spec.port,
                           models_max=int(router.get("models_max", 1)),
                           autoload=bool(router.get("autoload", True)), args=spec.args)
    else:
        engine.validate(spec)
        argv = engine.argv(spec, bind=bind, binary=binary)
    env = engine.env(spec)
    if spec.engine == "vllm" and spec.sleep_mode in {"l1", "l2"}:
        argv, env = prepare_vllm_launch(argv, env)
    workdir = spec.extra.get("workdir")
    return LaunchPlan(service=spec.name, argv=tuple(argv), env=env, service_dir=service_dir,
                      workdir=str(workdir) if workdir else None)


def collect_secrets(engine: Engine) -> dict[str, str]:
    secrets: dict[str, str] = {}
    key = os.environ.get("PI_API_KEY")
    if key:
        secrets.update(engine.secret_env_for(key))
    token = os.environ.get("HF_TOKEN")
    if token:
        secrets["HF_TOKEN"] = token
    return secrets


def make_supervisor(spec: ServiceSpec, host: Host, transport: Transport,
                    docker_client: Any = None) -> Supervisor:
    if spec.supervisor == "systemd":
        from gpumod.supervise.systemd import SystemdSupervisor, UnitOptions

        scope = str(spec.extra.get("systemd_scope") or "user")
        return SystemdSupervisor(transport, scope=scope,
                                 options=UnitOptions(engine=spec.engine, scope=scope))
    if spec.supervisor == "docker":
        if not host.is_local:
            raise UsageError("the docker supervisor drives the local Docker engine only",
                             hint="use --supervisor process on pods (it runs `docker run`)")
        from gpumod.engines.docker import DockerSupervisor

        return DockerSupervisor(spec, client=docker_client, bind=bind_address(spec))
    from gpumod.supervise.process import ProcessSupervisor

    return ProcessSupervisor(transport, manifest={"engine": spec.engine, "model": spec.model,
                                                  "port": spec.port, "gpumod": "service"})


def runtime(store: Store, spec: ServiceSpec, *, transport: Transport | None = None,
            docker_client: Any = None) -> Runtime:
    host = hosts_ops.get_host(store, spec.host)
    transport = transport or hosts_ops.transport_for(host)
    engine = get_engine(spec.engine)
    plan = launch_plan(spec, host, engine)
    served = "" if spec.sleep_mode == "router" else engine.served_model(spec)
    if spec.sleep_mode == "router":
        served = str((spec.extra.get("router") or {}).get("default_model") or "")
    endpoint = Endpoint(transport, spec.port, served_model=served, key_file=plan.env_file)
    return Runtime(spec, host, transport, engine, plan,
                   make_supervisor(spec, host, transport, docker_client), endpoint,
                   capability_for(spec.engine, spec.sleep_mode), collect_secrets(engine))


# ---------------------------------------------------------------------------- operations


def start_one(store: Store, rt: Runtime, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
              progress: Progress = _quiet) -> ServiceSpec:
    """Launch one service and wait until it is healthy; on failure nothing is left running."""
    spec = rt.spec
    if rt.alive():
        progress(f"{spec.name}: already running")
        pid = rt.pid()
        save_state(store, spec.name, "running", pid)
        return spec.with_(state="running", pid=pid)
    progress(f"{spec.name}: starting ({spec.engine}, port {spec.port}, {rt.supervisor.name})")
    save_state(store, spec.name, "starting", None)
    try:
        pid = rt.supervisor.start(rt.plan, rt.secrets)
        took = wait_healthy(rt.endpoint, rt.health_path, timeout=timeout, alive=rt.alive,
                            what=spec.name)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            rt.supervisor.stop(rt.plan)
        save_state(store, spec.name, "failed" if isinstance(exc, Exception) else "stopped")
        store.log_event("start-failed", host=spec.host, service=spec.name, detail=str(exc))
        if isinstance(exc, EngineError):
            cause = engine_error_line(rt)
            if cause and cause not in exc.message:
                raise EngineError(f"{exc.message}; the log says: {cause}",
                                  hint=exc.hint) from exc
        raise
    pid = pid or rt.pid()
    save_state(store, spec.name, "running", pid)
    store.log_event("started", host=spec.host, service=spec.name,
                    detail=f"healthy after {took:.1f}s, pid {pid}")
    progress(f"{spec.name}: healthy after {took:.1f}s")
    return spec.with_(state="running", pid=pid)


def engine_error_line(rt: Runtime) -> str:
    """The engine's last error line from its log (empty when there is none)."""
    reader = getattr(rt.supervisor, "read_log", None)
    if reader is None:
        result = rt.transport.run(["tail", "-n", "200", rt.plan.log_path], timeout=20)
        text = result.stdout if result.ok else ""
    else:
        try:
            text = reader(rt.plan, 200)
        except GpumodError:
            return ""
    lines = rt.engine.error_lines(text, limit=1) if text.strip() else []
    return lines[-1].strip()[:300] if lines else ""


def stop_one(store: Store, rt: Runtime, *, progress: Progress = _quiet) -> None:
    progress(f"{rt.spec.name}: stopping")
    rt.supervisor.stop(rt.plan)
    save_state(store, rt.spec.name, "stopped", None)
    store.log_event("stopped", host=rt.spec.host, service=rt.spec.name)


def start_service(store: Store, name: str, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
                  progress: Progress = _quiet, lock_wait: float = 5.0,
                  transport: Transport | None = None) -> list[str]:
    """Start a service and (first) its dependencies; returns the names started."""
    spec = get_service(store, name)
    started: list[str] = []
    with host_lock(spec.host, wait=lock_wait, what=f"service start {name}"):
        order = dependency_order(list_services(store, spec.host), [spec])
        for item in order:
            rt = runtime(store, get_service(store, item.name), transport=transport)
            if item.state == "sleeping" and rt.sleep is not None and rt.alive():
                from gpumod.ops.sleep import wake_runtime

                report = wake_runtime(store, rt, progress=progress)
                if not report.ok:
                    raise EngineError(report.summary())
                continue
            try:
                start_one(store, rt, timeout=timeout, progress=progress)
            except Exception as exc:
                for done in reversed(started):
                    with contextlib.suppress(Exception):
                        stop_one(store, runtime(store, get_service(store, done),
                                                transport=transport))
                raise EngineError(f"{item.name} did not start: {exc}",
                                  hint=f"see `gpumod service logs {item.name}`") from exc
            started.append(item.name)
    return started


def stop_service(store: Store, name: str, *, progress: Progress = _quiet,
                 lock_wait: float = 5.0, transport: Transport | None = None) -> list[str]:
    """Stop a service and, before it, every running service that depends on it."""
    spec = get_service(store, name)
    stopped: list[str] = []
    with host_lock(spec.host, wait=lock_wait, what=f"service stop {name}"):
        specs = list_services(store, spec.host)
        for item in [*dependents(specs, name), spec]:
            rt = runtime(store, get_service(store, item.name), transport=transport)
            if item.name != name and not rt.alive():
                continue
            stop_one(store, rt, progress=progress)
            stopped.append(item.name)
    return stopped


def restart_service(store: Store, name: str, *, progress: Progress = _quiet,
                    timeout: float = DEFAULT_HEALTH_TIMEOUT,
                    transport: Transport | None = None) -> list[str]:
    stopped = stop_service(store, name, progress=progress, transport=transport)
    started: list[str] = []
    for item in reversed(stopped):  # the service first, then its dependents again
        started += start_service(store, item, progress=progress, timeout=timeout,
                                 transport=transport)
    return started


def remove_service(store: Store, name: str, *, transport: Transport | None = None) -> None:
    spec = get_service(store, name)
    users = [s.name for s in list_services(store, spec.host) if name in s.depends_on]
    if users:
        raise ConflictError(f"{', '.join(users)} depend(s) on {name}",
                            hint="remove or change those services first")
    with host_lock(spec.host, what=f"service remove {name}"):
        rt = runtime(store, spec, transport=transport)
        rt.supervisor.stop(rt.plan)
        if rt.supervisor.name == "systemd":
            rt.supervisor.uninstall(rt.plan)  # type: ignore[attr-defined]
        with store.transaction() as db:
            db.execute("DELETE FROM services WHERE name = ?", (name,))
        store.log_event("removed", host=spec.host, service=name)


@dataclass
class ServiceStatus:
    spec: ServiceSpec
    process: str
    health: str          # ok | failing (HTTP ...) | unknown
    sleeping: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "process": self.process, "health": self.health,
                "sleeping": self.sleeping}


def service_status(store: Store, name: str, *, transport: Transport | None = None
                   ) -> ServiceStatus:
    spec = get_service(store, name)
    rt = runtime(store, spec, transport=transport)
    try:
        process = rt.supervisor.state(rt.plan).value
    except Exception:
        process = "unknown"
    health, sleeping = "unknown", None
    if process == "running":
        try:
            answer = rt.endpoint.request("GET", rt.health_path, timeout=5)
            health = "ok" if answer.status == 200 else f"failing ({answer.describe()})"
            if rt.sleep is not None:
                sleeping = rt.sleep.is_sleeping(rt.endpoint)
        except Exception as exc:
            health = f"unknown ({exc})"
    elif process == "stopped":
        health = "-"
    return ServiceStatus(spec, process, health, sleeping)


def check_ready(rt: Runtime, *, canary_check: bool = True) -> None:
    """Health 200 and (for OpenAI-style engines) a one-token canary answer."""
    wait_healthy(rt.endpoint, rt.health_path, timeout=60, alive=rt.alive, what=rt.spec.name)
    if canary_check and rt.spec.engine in {"vllm", "llamacpp"}:
        model = rt.sleep.canary_model(rt.endpoint) if rt.sleep else None
        canary(rt.endpoint, model=model, what=rt.spec.name)
