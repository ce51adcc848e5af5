"""The gateway as an operation: start it on a host, stop it, ask how it and its models are.

`gpumod gateway start [--pod NAME]` runs the gateway ON the host whose services it
serves, under the same supervisors as services (the process supervisor's setsid, pid
file and log in ``<root>/gateway/``, or a systemd unit), so it outlives the CLI. The
key (PI_API_KEY) reaches it through the supervisor's 0600 env file. On a pod, gpumod's
code and the host's records are shipped first (see ops.gateway_remote).

The record of a started gateway (port, bind, URL, supervisor) is a setting
``gateway:HOST`` in the store (no schema change). `status` asks the gateway itself for
its per-model table over the host's transport and, for pods, reconciles the local
records with it.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gpumod import validate
from gpumod.errors import ConflictError, EngineError, GpumodError, NotFoundError, UsageError
from gpumod.hosts.model import Host
from gpumod.ops.gateway_config import DEFAULT_PORT, DEFAULT_QUEUE_WAIT, GatewayConfig
from gpumod.store.db import Store

if TYPE_CHECKING:  # a listing reads the record only: no transport, no supervisor
    from gpumod.hosts.transports.base import Transport
    from gpumod.supervise.base import LaunchPlan, Supervisor

Output = Callable[[str], None]
SERVICE = "gateway"    # the plan's name: folder <root>/gateway, unit gpumod-gateway.service
HEALTH_TIMEOUT = 60.0


def _quiet(_: str) -> None:
    pass


@dataclass
class GatewayRecord:
    host: str
    port: int
    bind: str
    url: str
    supervisor: str = "process"
    scope: str = ""
    python: str = ""
    lib: str = ""
    default_ttl: float | None = None
    queue_wait: float | None = None
    started_at: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatewayRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class GatewayStatus:
    host: str
    state: str                     # running | stopped | crashed | not started | unreachable | unknown
    url: str = ""
    detail: str = ""
    supervisor: str = ""
    bind: str = ""
    port: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _key(host: str) -> str:
    return f"gateway:{host}"


def record(store: Store, host: str) -> GatewayRecord | None:
    raw = store.get_setting(_key(host))
    if not raw:
        return None
    try:
        return GatewayRecord.from_json(json.loads(raw))
    except (ValueError, TypeError):
        return None


def _save(store: Store, rec: GatewayRecord) -> None:
    store.set_setting(_key(rec.host), json.dumps(asdict(rec), sort_keys=True))


def _drop(store: Store, host: str) -> None:
    store.delete_setting(_key(host))


def gateway_dir(host: Host) -> str:
    from gpumod.ops.hosts import host_root

    return posixpath.join(host_root(host), SERVICE)


def plan_for(host: Host, rec: GatewayRecord) -> LaunchPlan:
    """argv, env and folder of the gateway process on its host (no secret in either)."""
    from gpumod.ops.hosts import host_root
    from gpumod.supervise.base import LaunchPlan

    folder = gateway_dir(host)
    config = posixpath.join(folder, "config.json")
    if host.is_local:
        argv = [sys.executable, "-m", "gpumod.gateway", "serve", "--config", config]
        env = {"GPUMOD_HOME": host_root(host)}
    else:
        argv = [rec.python, "-m", "gpumod.gateway", "serve", "--config", config,
                "--snapshot", posixpath.join(folder, "snapshot.json")]
        env = {"GPUMOD_HOME": host_root(host), "PYTHONPATH": rec.lib}
    env["PYTHONUNBUFFERED"] = "1"
    return LaunchPlan(service=SERVICE, argv=tuple(argv), env=env, service_dir=folder)


def supervisor_for(rec: GatewayRecord, transport: Transport) -> Supervisor:
    if rec.supervisor == "systemd":
        from gpumod.supervise.systemd import SystemdSupervisor
        from gpumod.supervise.units import UnitOptions

        scope = rec.scope or "user"
        return SystemdSupervisor(transport, scope=scope, options=UnitOptions(
            engine="command", scope=scope, description="gpumod gateway"))
    from gpumod.supervise.process import ProcessSupervisor

    return ProcessSupervisor(transport, manifest={"gpumod": "gateway", "port": rec.port,
                                                  "bind": rec.bind})


def _pick_supervisor(choice: str, transport: Transport) -> tuple[str, str]:
    if choice == "process":
        return "process", ""
    from gpumod.supervise.systemd import detect_scope

    scope = detect_scope(transport)
    if scope:
        return "systemd", scope
    if choice == "systemd":
        raise UsageError("this host runs no systemd manager gpumod can use",
                         hint="use --supervisor process (or auto)")
    return "process", ""


def start(store: Store, pod: str | None = None, *, port: int | None = None,
          bind: str | None = None, idle_ttl: float | None = None,
          queue_wait: float | None = None, supervisor: str = "auto",
          timeout: float = HEALTH_TIMEOUT, progress: Output = _quiet,
          log: Output = _quiet) -> GatewayStatus:
    """Start (or restart, with the current route table) the gateway of a host."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.startplan import api_key_from_env

    key = api_key_from_env()
    host = hosts_ops.resolve_host(store, pod)
    port = validate.port(port or DEFAULT_PORT)
    bind = _checked_bind(("127.0.0.1" if host.is_local else "0.0.0.0")  # noqa: S104
                         if bind is None else bind)  # `--bind ""` is a typo, not the default
    if supervisor not in ("auto", "process", "systemd"):
        raise UsageError(f"unknown supervisor {supervisor!r}", hint="use auto, process or systemd")
    if host.is_local:
        _check_installed()
    transport = hosts_ops.transport_for(host)
    from gpumod.ops.locks import gateway_lock

    with gateway_lock(host.name, what="gateway start"):
        return _start_locked(store, host, transport, key=key, port=port, bind=bind,
                             idle_ttl=idle_ttl, queue_wait=queue_wait, supervisor=supervisor,
                             timeout=timeout, progress=progress, log=log)


def _start_locked(store: Store, host: Host, transport: Transport, *, key: str, port: int,
                  bind: str, idle_ttl: float | None, queue_wait: float | None,
                  supervisor: str, timeout: float, progress: Output, log: Output
                  ) -> GatewayStatus:
    from gpumod.ops import gateway_remote as remote
    from gpumod.ops.endpoints import endpoint_url
    from gpumod.ops.probe import listening_ports

    old = record(store, host.name)
    # What was asked is checked before a running gateway is stopped: a restart with a
    # port or supervisor that cannot work leaves the running one as it was.
    taken = {s.port: s.name for s in _services(store, host.name)}
    if port in taken:
        raise ConflictError(f"port {port} on {host.name} is used by service {taken[port]}",
                            hint="give the gateway another --port")
    if port in listening_ports(transport) and (old is None or old.port != port):
        raise ConflictError(f"port {port} on {host.name} is taken by another program",
                            hint="give the gateway another --port" + (
                                f"; the running one (port {old.port}) was left as it is"
                                if old is not None else ""))
    sup_name, scope = _pick_supervisor(supervisor, transport)
    folder = gateway_dir(host)
    rec = GatewayRecord(host=host.name, port=port, bind=bind, url=endpoint_url(host, port),
                        supervisor=sup_name, scope=scope, default_ttl=idle_ttl,
                        queue_wait=queue_wait,
                        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    config = GatewayConfig(host="local" if not host.is_local else host.name, bind=bind,
                           port=port, default_ttl=idle_ttl,
                           queue_wait=DEFAULT_QUEUE_WAIT if queue_wait is None else queue_wait)
    if not host.is_local:
        progress(f"gateway on {host.name}: shipping gpumod's code")
        rec.python, rec.lib = remote.ship_code(transport, host, folder)
        remote.write_file(transport, posixpath.join(folder, "snapshot.json"),
                          json.dumps(remote.snapshot(store, host)))
    remote.write_file(transport, posixpath.join(folder, "config.json"),
                      json.dumps(config.to_json()))
    if old is not None:  # its config was read at its start: the new files do not touch it
        progress(f"gateway on {host.name}: stopping the running one first")
        _stop_process(host, old, transport)
        _drop(store, host.name)
    plan = plan_for(host, rec)
    sup = supervisor_for(rec, transport)
    progress(f"gateway on {host.name}: starting on {bind}:{port} ({sup_name})")
    _save(store, rec)  # recorded before it can run: a failed cleanup is finished by `stop`
    try:
        pid = sup.start(plan, {"PI_API_KEY": key})
        _wait_healthy(transport, host, plan, rec, pid if sup_name != "process" else None,
                      timeout, log)
    except BaseException as exc:
        try:
            sup.stop(plan, timeout=10)
        except GpumodError as stop_exc:
            if isinstance(exc, GpumodError):
                exc.hint = (f"the gateway may still run on {host.name} ({stop_exc.message}); "
                            f"`gpumod gateway stop{'' if host.is_local else ' --pod ' + host.name}`"
                            " finishes the cleanup")
            raise exc from stop_exc  # the start's failure, with the way to finish the cleanup
        _drop(store, host.name)
        raise
    store.log_event("gateway-start", host=host.name, detail=f"{rec.url} ({sup_name})")
    return status(store, host.name, transport=transport)


def _services(store: Store, host: str) -> list[Any]:
    from gpumod.ops.services import list_services

    return list_services(store, host)


def _wait_healthy(transport: Transport, host: Host, plan: LaunchPlan, rec: GatewayRecord,
                  pid: int | None, timeout: float, log: Output) -> None:
    from gpumod.ops.addresses import probe_address
    from gpumod.ops.probe import wait_argv
    from gpumod.supervise.process import TAIL_SCRIPT

    with transport.stream(wait_argv(plan.service_dir, rec.port, "/health",
                                    probe_address(rec.bind), timeout, (200,), pid=pid)) as out:
        for line in out.iter_lines():
            log(line)
    code = out.returncode
    if code == 0:
        return
    tail = transport.run_script(TAIL_SCRIPT, [plan.log_path, "20", "0"], timeout=30)
    lines = [line for line in tail.stdout.splitlines() if line.strip()][-3:]
    detail = " | ".join(lines) or "no output"
    what = {3: "exited during start", 4: f"was not healthy within {timeout:g}s"}.get(
        code, f"failed to start (exit {code})")
    raise EngineError(f"the gateway on {host.name} {what}: {detail}",
                      hint=f"its log: {plan.log_path}")


def _stop_process(host: Host, rec: GatewayRecord, transport: Transport) -> None:
    supervisor_for(rec, transport).stop(plan_for(host, rec), timeout=35)


def stop(store: Store, pod: str | None = None) -> GatewayRecord:
    """Stop a host's gateway (in-flight requests get 30 s) and forget its record."""
    from gpumod.ops import hosts as hosts_ops

    host = hosts_ops.resolve_host(store, pod)
    rec = record(store, host.name)
    if rec is None:
        raise NotFoundError(f"no gateway was started on {host.name}",
                            hint="start one with `gpumod gateway start`")
    from gpumod.ops.locks import gateway_lock

    with gateway_lock(host.name, what="gateway stop"):
        _stop_process(host, rec, hosts_ops.transport_for(host))
        _drop(store, host.name)
    store.log_event("gateway-stop", host=host.name, detail=rec.url)
    return rec


def status(store: Store, pod: str | None = None, *, transport: Transport | None = None,
           reconcile: bool = True) -> GatewayStatus:
    """The gateway's process state and, when it runs, its per-model table."""
    from gpumod.errors import TransportError
    from gpumod.hosts.http import Endpoint
    from gpumod.ops import gateway_remote as remote
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.addresses import probe_address
    from gpumod.supervise.base import ProcessState

    host = hosts_ops.resolve_host(store, pod)
    rec = record(store, host.name)
    if rec is None:
        return GatewayStatus(host.name, "not started",
                             detail="start one with `gpumod gateway start`")
    out = GatewayStatus(host.name, "unknown", rec.url, supervisor=rec.supervisor,
                        bind=rec.bind, port=rec.port)
    transport = transport or hosts_ops.transport_for(host)
    plan = plan_for(host, rec)
    try:
        state = supervisor_for(rec, transport).state(plan)
        if state == ProcessState.UNKNOWN:  # supervisors answer unknown for a lost host too
            transport.run(["true"], timeout=30)
    except TransportError as exc:
        out.state, out.detail = "unreachable", exc.message
        return out
    out.state = {ProcessState.RUNNING: "running", ProcessState.STOPPED: "stopped",
                 ProcessState.CRASHED: "crashed"}.get(state, "unknown")
    if state != ProcessState.RUNNING:
        out.detail = f"see its log: {plan.log_path}"
        return out
    endpoint = Endpoint(transport, rec.port, key_file=plan.env_file, key_vars=("PI_API_KEY",),
                        host=probe_address(rec.bind))
    try:
        answer = endpoint.request("GET", "/gateway/status", timeout=10)
    except GpumodError as exc:
        out.detail = exc.message
        return out
    data = answer.json()
    if answer.status != 200 or not isinstance(data, dict):
        out.detail = f"its status page answered {answer.describe()}"
        return out
    out.models = list(data.get("models") or [])
    if reconcile and not host.is_local:
        remote.reconcile(store, host, out.models)
    return out


def reconcile_hosts(store: Store, hosts: list[str]) -> None:
    """Before a listing: pods whose gateway may have slept or started services."""
    for name in hosts:
        rec = record(store, name)
        if rec is None or name == "local":
            continue
        try:
            status(store, name)
        except GpumodError:
            continue  # the listing itself reports an unreachable host


def tunnel_plan(store: Store, pod: str | None, local_port: int | None
                ) -> tuple[GatewayRecord, list[str], str]:
    """(record, ssh -N -L argv, local base URL) to reach a pod's gateway from here."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.deploy import _free_local_port, tunnel_argv

    host = hosts_ops.resolve_host(store, pod)
    rec = record(store, host.name)
    if rec is None:
        raise NotFoundError(f"no gateway was started on {host.name}",
                            hint=f"start one with `gpumod gateway start --pod {host.name}`")
    if host.is_local:
        raise UsageError("the gateway runs on this machine: no tunnel needed",
                         hint=f"use {rec.url}")
    port = local_port if local_port is not None else _free_local_port(rec.port)
    validate.port(port)
    return rec, tunnel_argv(host, rec.port, port, rec.bind), f"http://127.0.0.1:{port}/v1"


def foreground(*, port: int | None = None, bind: str | None = None,
               idle_ttl: float | None = None, queue_wait: float | None = None
               ) -> tuple[GatewayConfig, str]:
    """`gpumod gateway run`: the settings and the key of this machine's gateway, checked;
    the CLI then serves it in the foreground (gpumod.gateway.server.serve)."""
    from gpumod.ops.startplan import api_key_from_env

    key = api_key_from_env()
    config = GatewayConfig(host="local", bind=_checked_bind("127.0.0.1" if bind is None else bind),
                           port=validate.port(port or DEFAULT_PORT), default_ttl=idle_ttl,
                           queue_wait=DEFAULT_QUEUE_WAIT if queue_wait is None else queue_wait)
    _check_installed()
    from gpumod.hosts.transports.local import LocalTransport
    from gpumod.ops.probe import listening_ports

    if config.port in listening_ports(LocalTransport()):  # else uvicorn exits 3, "not found"
        raise ConflictError(f"port {config.port} on local is taken by another program",
                            hint="give the gateway another --port")
    return config, key


def _checked_bind(bind: str) -> str:
    from gpumod.ops.addresses import BINDS

    if bind not in BINDS:
        raise UsageError(f"invalid bind address {bind!r}", hint=f"use {', '.join(BINDS)}")
    return bind


def _check_installed() -> None:
    import importlib.util

    missing = [m for m in ("aiohttp", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"the gateway needs {', '.join(missing)}, which are not installed",
                         hint="pip install 'gpumod[gateway]'")

