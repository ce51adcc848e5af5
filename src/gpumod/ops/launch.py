"""The one launch path: a service's runtime pieces, and launch -> wait healthy -> record.

`pi start` (a new deployment, reserved in the store first) and `gpumod service
start`, mode switches, wake-by-restart and `gpumod watch` (a defined service)
all go through :func:`launch`:

1. planner admission (``gpumod.planner.admission.check_start``) with the host's live
   GPU figures: the engine's memory settings are computed where the user set none,
   and a service that cannot fit is refused (``--force`` overrides);
2. the supervisor starts the engine (secrets by stdin into a 0600 file);
3. health is awaited ON the host with a deadline while the engine log streams
   (the answer must come from the service's own process group);
4. the record says 'running' with the pid; the planner learns from the engine's log
   (``gpumod.planner.calibration.after_start``).

Any failure or Ctrl+C after the launch stops what was launched. A new deployment's
reservation and folder are removed (nothing half-recorded); a defined service is
marked 'failed' and keeps its log.

One bind rule (:func:`bind_address`): vLLM with sleep enabled (``VLLM_SERVER_DEV_MODE=1``)
always on 127.0.0.1 (its dev endpoints have no authentication); else the service's own
``bind``; else 127.0.0.1 on `local` and 0.0.0.0 on pods.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod.engines.base import Engine, get_engine
from gpumod.engines.sleep import (
    DEV_MODE_ENV,
    Endpoint,
    SleepCapable,
    capability_for,
    prepare_vllm_launch,
    router_argv,
)
from gpumod.engines.sleep import wait_healthy as poll_healthy
from gpumod.errors import (
    Cancelled,
    EngineError,
    GpumodError,
    RemoteCommandError,
    TransportError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import probe as probes
from gpumod.ops import services as records
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor
from gpumod.supervise.process import TAIL_SCRIPT, ProcessSupervisor

Output = Callable[[str], None]
BINDS = ("127.0.0.1", "0.0.0.0", "::1", "::", "localhost")  # noqa: S104
UNSET: Any = object()


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- addresses


def dev_mode(spec: ServiceSpec) -> bool:
    """vLLM with sleep enabled: its unauthenticated dev endpoints are on."""
    return spec.engine == "vllm" and (spec.sleep_mode in {"l1", "l2"}
                                      or str(spec.env.get(DEV_MODE_ENV, "")) == "1")


def bind_address(spec: ServiceSpec, host: Host) -> str:
    if dev_mode(spec):
        return "127.0.0.1"  # dev endpoints have no auth
    bind = str(spec.extra.get("bind") or "")
    if bind:
        if bind not in BINDS:
            raise UsageError(f"invalid bind address {bind!r}", hint=f"use {', '.join(BINDS)}")
        return bind
    return "127.0.0.1" if host.is_local else "0.0.0.0"  # noqa: S104 - pods are reached remotely


def probe_address(bind: str) -> str:
    """Where, on the host itself, a server bound to `bind` answers."""
    if bind in ("0.0.0.0", "::", "127.0.0.1", "", "localhost"):  # noqa: S104
        return "127.0.0.1"
    return "[::1]" if bind == "::1" else bind


def service_dir(host: Host, name: str) -> str:
    return posixpath.join(hosts_ops.host_root(host), "services", name)


# ---------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class LaunchOptions:
    """What the host adds to a launch (`pi start` finds these in its pre-flight)."""

    binary: str | None = None          # the engine binary's path on the host
    model_path: str | None = None      # llama.cpp: the .gguf file on the host
    env: dict[str, str] = field(default_factory=dict)   # PATH, HF_HOME, ...
    manifest: dict[str, Any] = field(default_factory=dict)


def launch_plan(spec: ServiceSpec, host: Host, engine: Engine | None = None,
                options: LaunchOptions | None = None) -> LaunchPlan:
    engine = engine or get_engine(spec.engine)
    options = options or LaunchOptions()
    bind = bind_address(spec, host)
    binary = options.binary or (host.engine_env or {}).get(f"{spec.engine}_binary") or None
    if spec.engine == "llamacpp" and spec.sleep_mode == "router":
        router = spec.extra.get("router") or {}
        argv = router_argv(binary or "llama-server", spec.model, bind=bind, port=spec.port,
                           models_max=int(router.get("models_max", 1)),
                           autoload=bool(router.get("autoload", True)), args=spec.args)
    else:
        engine.validate(spec)
        # a `pi start` deployment relaunched later (wake by restart, the gateway) finds its
        # GGUF file where its first start did
        model_path = options.model_path or spec.extra.get("model_path") or None
        argv = engine.argv(spec, bind=bind, binary=binary,
                           model_path=model_path if spec.engine == "llamacpp" else
                           options.model_path)
        if spec.engine == "command" and options.binary:
            argv[0] = options.binary
    env = {**engine.env(spec), **options.env}
    if dev_mode(spec):
        argv, env = prepare_vllm_launch(argv, env)
    workdir = spec.extra.get("workdir")
    return LaunchPlan(service=spec.name, argv=tuple(argv), env=env,
                      service_dir=service_dir(host, spec.name),
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


def supervisor_for(spec: ServiceSpec, host: Host, transport: Transport, *,
                   manifest: dict[str, Any] | None = None, docker_client: Any = None
                   ) -> Supervisor:
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

        return DockerSupervisor(spec, client=docker_client, bind=bind_address(spec, host))
    return ProcessSupervisor(transport, manifest=manifest or {
        "engine": spec.engine, "model": spec.model, "port": spec.port, "gpumod": "service"})


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
    options: LaunchOptions = field(default_factory=LaunchOptions)

    @property
    def health_path(self) -> str:
        return self.spec.health_path or "/health"

    @property
    def bind(self) -> str:
        return bind_address(self.spec, self.host)

    def alive(self) -> bool:
        return self.supervisor.state(self.plan) == ProcessState.RUNNING

    def pid(self) -> int | None:
        """The service's main pid on its host right now (None when not running)."""
        if self.supervisor.name == "process":
            result = self.transport.run(["cat", self.plan.pid_path], timeout=20)
            text = result.stdout.strip()
            return int(text) if result.ok and text.isdigit() else None
        if self.supervisor.name == "systemd":
            from gpumod.supervise.systemd import unit_name

            props = self.supervisor.properties(unit_name(self.spec.name))  # type: ignore[attr-defined]
            pid = props.get("MainPID", "0")
            return int(pid) if pid.isdigit() and int(pid) > 0 else None
        return self.spec.pid

    def with_args(self, args: Sequence[str]) -> Runtime:
        """The same service launched with other engine args (planner admission)."""
        spec = self.spec.with_(args=tuple(args))
        return replace(self, spec=spec, plan=launch_plan(spec, self.host, self.engine,
                                                         self.options))

    def read_log(self, lines: int = 200) -> str:
        """The last lines of the service's log on its host ('' when there is none)."""
        try:
            result = self.transport.run_script(TAIL_SCRIPT, [self.plan.log_path, str(lines), "0"],
                                               timeout=30)
        except GpumodError:
            return ""
        return result.stdout if result.ok else ""

    def stop(self, *, timeout: float = 20, forget: bool = False) -> str:
        """TERM then KILL; 'stopped', 'killed' or 'not-running'. forget: remove its folder."""
        if isinstance(self.supervisor, ProcessSupervisor):
            return self.supervisor.stop(self.plan, timeout=timeout, forget=forget)
        was = self.supervisor.state(self.plan)
        self.supervisor.stop(self.plan, timeout=timeout)
        if forget and self.supervisor.name == "systemd":
            self.supervisor.uninstall(self.plan)  # type: ignore[attr-defined]
            self.transport.run(["rm", "-rf", "--", self.plan.service_dir], timeout=30)
        return "stopped" if was == ProcessState.RUNNING else "not-running"


def runtime(store: Store, spec: ServiceSpec, *, transport: Transport | None = None,
            docker_client: Any = None, options: LaunchOptions | None = None,
            secrets: dict[str, str] | None = None, host: Host | None = None) -> Runtime:
    host = host or hosts_ops.get_host(store, spec.host)
    transport = transport or hosts_ops.transport_for(host)
    engine = get_engine(spec.engine)
    options = options or LaunchOptions()
    plan = launch_plan(spec, host, engine, options)
    if spec.sleep_mode == "router":
        served = str((spec.extra.get("router") or {}).get("default_model") or "")
    else:
        served = engine.served_model(spec)
    endpoint = Endpoint(transport, spec.port, served_model=served, key_file=plan.env_file,
                        host=probe_address(bind_address(spec, host)))
    supervisor = supervisor_for(spec, host, transport, manifest=options.manifest or None,
                                docker_client=docker_client)
    return Runtime(spec, host, transport, engine, plan, supervisor, endpoint,
                   capability_for(spec.engine, spec.sleep_mode),
                   collect_secrets(engine) if secrets is None else secrets, options)


# ---------------------------------------------------------------------------- waiting


def wait_healthy(rt: Runtime, pid: int | None, deadline: float, log: Output) -> float:
    """Stream the engine log until its health answers; EngineError with its own errors if not.

    On the host, in one long call: the answer must come from the service's own process
    group (another program on the port is never taken for it). The Docker SDK supervisor
    has no host-side process or log: its container is polled over HTTP instead.
    """
    began = time.monotonic()
    if rt.supervisor.name == "docker":
        return poll_healthy(rt.endpoint, rt.health_path, timeout=deadline, alive=rt.alive,
                            what=rt.spec.name)
    proc = rt.transport.popen(probes.wait_argv(
        rt.plan.service_dir, rt.spec.port, rt.health_path, probe_address(rt.bind), deadline,
        rt.engine.health.ok_codes, pid=pid if rt.supervisor.name != "process" else None,
        owner_check=rt.spec.engine != "docker"))
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            log(raw.decode(errors="replace").rstrip("\n"))
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code == 0:
        return time.monotonic() - began
    errors = rt.engine.error_lines(rt.read_log(400))
    detail = " | ".join(errors[-3:]) if errors else "no output"
    name = f"{rt.spec.name} ({rt.engine.name})"
    if code == 3:
        raise EngineError(f"{name} exited during start: {detail}",
                          hint=f"the engine's log: {rt.plan.log_path}")
    if code == 4:
        raise EngineError(f"{name} was not healthy within {deadline:g}s: {detail}",
                          hint="a big model can need longer: --timeout SECONDS")
    if code == 255 and not rt.host.is_local:
        raise TransportError(f"{rt.transport.label}: the connection dropped while waiting "
                             "for health")
    raise EngineError(f"waiting for {name} failed (exit {code}): {detail}")


# ---------------------------------------------------------------------------- planner hooks


def gpu_usage(transport: Transport) -> list[Any] | None:
    """Live per-GPU figures from nvidia-smi on the host; None when it has no nvidia-smi."""
    from gpumod.hosts.gpus import snapshot

    try:
        snap = snapshot(transport)
    except RemoteCommandError:  # nvidia-smi there but failing: no live figures
        return None
    return None if snap is None else list(snap.gpus)


def admit(store: Store, rt: Runtime, usage: list[Any] | None, *, force: bool,
          progress: Output) -> tuple[Runtime, dict[str, Any] | None]:
    """Planner admission: memory settings computed, or CapacityError (unless force).

    Returns the runtime to launch (with the admitted engine args) and the estimate used.
    """
    try:
        from gpumod.planner.admission import check_start
    except ImportError as exc:  # the planner's admission is not part of this build
        if exc.name not in ("gpumod.planner.admission", None) and "check_start" not in str(exc):
            raise
        return rt, None
    admission = check_start(store, rt.host, rt.spec, usage, force=force)
    for note in admission.notes:
        progress(f"{rt.spec.name}: {note}")
    if tuple(admission.args) != tuple(rt.spec.args):
        rt = rt.with_args(admission.args)
    return rt, getattr(admission, "estimate", None)


def process_gpu_mib(transport: Transport, pid: int) -> int | None:
    """GPU memory (MiB) the process tree of pid holds on its busiest GPU; None if unknown."""
    from gpumod.engines.sleep import process_tree
    from gpumod.hosts.gpus import snapshot

    snap = snapshot(transport)
    if snap is None:
        return None
    tree = process_tree(transport, pid)
    per_gpu: dict[str, int] = {}
    for proc in snap.processes:
        if proc.pid in tree:
            if proc.used_mib is None:
                return None
            per_gpu[proc.gpu_uuid] = per_gpu.get(proc.gpu_uuid, 0) + proc.used_mib
    return max(per_gpu.values()) if per_gpu else None


def calibrate(store: Store, rt: Runtime, pid: int | None, *, measured: bool,
              estimate: dict[str, Any] | None) -> None:
    """Feed the planner what the engine reported (best effort: never fails a start)."""
    try:
        from gpumod.planner.calibration import after_start
    except ImportError:
        return
    try:
        process_mib = process_gpu_mib(rt.transport, pid) if measured and pid else None
        after_start(store, rt.spec, rt.host, rt.read_log(2000), process_mib, estimate=estimate)
    except Exception as exc:  # calibration is best effort: never fail a healthy start
        store.log_event("calibration-failed", host=rt.host.name, service=rt.spec.name,
                        detail=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- launch


def launch(store: Store, rt: Runtime, *, timeout: float, new: bool = False,
           force: bool = False, usage: Any = UNSET, log: Output = _quiet,
           progress: Output = _quiet) -> ServiceSpec:
    """Admit, start, wait until healthy, record; on failure nothing is left running.

    new: rt.spec is a `pi start` reservation (state 'starting'): a healthy start records
    the launch (pid, args, env, argv), a failed one removes the reservation and the
    service folder. Otherwise the defined service's state goes 'starting' -> 'running'
    (or 'failed'). usage: live GPU figures when the caller already has them.
    """
    name = rt.spec.name
    if usage is UNSET:
        usage = gpu_usage(rt.transport)
    try:
        rt, estimate = admit(store, rt, usage, force=force, progress=progress)
    except BaseException:
        if new:
            records.drop(store, name)
        raise
    spec = rt.spec
    progress(f"{name}: starting ({spec.engine}, port {spec.port}, GPU(s) "
             f"{','.join(map(str, spec.gpus)) or 'none'}, {rt.supervisor.name})")
    if not new:
        records.save_state(store, name, "starting", None)
    launched = False
    try:
        pid = rt.supervisor.start(rt.plan, rt.secrets)
        launched = True
        took = wait_healthy(rt, pid, timeout, log)
        pid = pid or rt.pid()
        if new:
            done = records.finish(store, spec.with_(
                pid=pid, env=dict(rt.plan.env),
                extra={**spec.extra, "pid": pid, "argv": list(rt.plan.argv)}))
        else:
            records.save_state(store, name, "running", pid)
            done = spec.with_(state="running", pid=pid)
    except BaseException as exc:
        cleanup: str | None = None
        if launched or rt.supervisor.name != "process":
            try:
                rt.stop(timeout=10, forget=new)
            except GpumodError as stop_exc:
                cleanup = stop_exc.message
        with contextlib.suppress(Exception):  # the original error matters more
            if new:
                records.drop(store, name)
            else:
                records.save_state(store, name,
                                   "failed" if isinstance(exc, Exception) else "stopped")
        store.log_event("start-failed", host=spec.host, service=name, detail=str(exc))
        if isinstance(exc, KeyboardInterrupt):
            what = "nothing recorded" if new else f"{name} is stopped"
            raise Cancelled(f"start cancelled; the engine was stopped and {what}"
                            + (f" (cleanup: {cleanup})" if cleanup else "")) from None
        if cleanup and isinstance(exc, GpumodError):
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + f"cleanup: {cleanup}"
        raise
    store.log_event("started", host=spec.host, service=name,
                    detail=f"{spec.engine} {spec.model} port {spec.port}, healthy after "
                           f"{took:.1f}s, pid {pid}")
    progress(f"{name}: healthy after {took:.1f}s")
    calibrate(store, rt, pid, measured=usage is not None, estimate=estimate)
    return done
