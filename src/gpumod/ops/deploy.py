"""Deployments: start, list, stop, logs, tunnel (Pi's model commands), on any host.

start:  validate everything locally -> one pre-flight round trip to the host
        (engine binary, model on disk or in the HF cache, listening ports) ->
        download into the host's HF cache if needed (progress; Ctrl+C cancels
        and kills the download on the host) -> under the host's (shared) and the
        name's lock: record 'starting' with a free port and GPUs in ONE
        transaction -> the one launch path shared with `gpumod service start`
        (ops.launch.launch: admission and reservation in the host's critical
        section, two-phase launch with the pid recorded before the engine runs,
        health wait ON the host while the log streams, record, calibration).
        Any failure, Ctrl+C, SIGTERM or SIGHUP after that stops the whole process
        group; once it is confirmed gone the folder and the record go. If the
        host cannot confirm it, the record stays 'stopping' and says why.
list:   ops.states (one round trip per host, hosts in parallel; an unreachable
        host marks its services 'unreachable' and never deletes anything);
        --prune forgets deployments whose process is gone (never definitions),
        finishing a stop that could not be confirmed.
stop:   the lifecycle's one stop (ops.lifecycle.stop, as `gpumod service stop`):
        dependents first, TERM the process group, KILL after a timeout, confirm
        the port is free, then drop the record (a `gpumod service` definition is
        kept, 'stopped'). A failed SSH call keeps the record ('stopping').
"""

from __future__ import annotations

import os
import posixpath
import shlex
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpumod import validate
from gpumod.catalog.models import version_ok
from gpumod.errors import (
    Cancelled,
    CapacityError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    TransportError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hostops
from gpumod.ops import inventory, lifecycle, locks, machine
from gpumod.ops import launch as launcher
from gpumod.ops import services as records
from gpumod.ops.addresses import bind_address, probe_address, service_dir
from gpumod.ops.endpoints import endpoint_url
from gpumod.ops.machine import StopResult
from gpumod.ops.preflight import Preflight, _engine_path_prefix, preflight
from gpumod.ops.runtime import LaunchOptions, Runtime, runtime
from gpumod.ops.startplan import (
    StartPlan,
    StartRequest,
    api_key_from_env,
    mask,
    plan_start,
    validate_model,
)
from gpumod.ops.states import ServiceStatus
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.store.db import Store
from gpumod.supervise.process import tail_argv

__all__ = ["StartRequest", "StopResult", "logs", "plan_start", "prune", "services_on", "start",
           "stop", "tunnel_plan", "validate_model"]

Output = Callable[[str], None]

DEFAULT_DEADLINE = {"vllm": 1200.0, "llamacpp": 300.0, "command": 300.0}
STOP_TIMEOUT = 20.0

DOWNLOAD_SCRIPT = r"""
pidfile=$1; prefix=$2; hfhome=$3; envfile=$4; model=$5; file=$6
if [ -n "$prefix" ]; then PATH="$prefix:$PATH"; export PATH; fi
if [ -n "$hfhome" ]; then HF_HOME=$hfhome; export HF_HOME; fi
IFS= read -r token || true
if [ -z "$token" ] && [ -r "$envfile" ]; then
  token=$( . "$envfile" >/dev/null 2>&1; printf '%s' "${HF_TOKEN:-}" )
fi
if [ -n "$token" ]; then HF_TOKEN=$token; export HF_TOKEN; fi
unset token
if command -v hf >/dev/null 2>&1; then cli=hf
elif command -v huggingface-cli >/dev/null 2>&1; then cli=huggingface-cli
else echo "neither hf nor huggingface-cli is installed on the host" >&2; exit 127; fi
mkdir -p "$(dirname "$pidfile")"
if [ -n "$file" ]; then "$cli" download "$model" "$file" & else "$cli" download "$model" & fi
child=$!
echo "$child" > "$pidfile"
trap 'kill -TERM "$child" 2>/dev/null; rm -f "$pidfile"; exit 130' INT TERM HUP PIPE
wait "$child"; rc=$?
rm -f "$pidfile"
exit $rc
"""

CANCEL_DOWNLOAD_SCRIPT = r"""
pidfile=$1
[ -r "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
kill -TERM "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$pid" 2>/dev/null
rm -f "$pidfile"
"""


@dataclass
class StartResult:
    spec: ServiceSpec
    url: str
    served_model: str
    masked_key: str
    support: str
    notes: str
    warnings: list[str]
    seconds: float

    def exports(self) -> str:
        return (f"export OPENAI_BASE_URL={shlex.quote(self.url)} "
                f"OPENAI_MODEL={shlex.quote(self.served_model)}\n"
                'export OPENAI_API_KEY="$PI_API_KEY"')


def download(transport: Transport, host: Host, plan: StartPlan, pre: Preflight,
             name: str, out: Output) -> None:
    """Fetch the model into the host's HF cache with live progress; Ctrl+C cancels it there."""
    if pre.hf_cli is None:
        raise EngineError(f"{plan.hf_repo} is not in the Hugging Face cache on "
                          f"{transport.label} and `hf` is not installed there",
                          hint="install huggingface_hub on the host, or give a local path")
    root = hostops.host_root(host)
    pidfile = posixpath.join(root, "downloads", f"{name}.pid")
    argv = ["sh", "-c", DOWNLOAD_SCRIPT, "sh", pidfile, _engine_path_prefix(host),
            pre.hf_home, posixpath.join(root, "secrets.env"), plan.hf_repo or "",
            plan.gguf_file or ""]
    out(f"downloading {plan.hf_repo}{'/' + plan.gguf_file if plan.gguf_file else ''} "
        f"into {pre.hf_home} on {transport.label} (Ctrl+C cancels)")
    tail: deque[str] = deque(maxlen=20)
    from gpumod.hf_errors import quiet_hints

    out = quiet_hints(out)  # hf's "set HF_DEBUG=1" hints: the error below says what to do
    try:
        with transport.stream(argv, input=os.environ.get("HF_TOKEN", "") + "\n") as stream:
            for line in stream.iter_lines(carriage_return=True):
                text = line.rstrip()
                if text:
                    tail.append(text)
                    out(text)
        code = stream.returncode
    except KeyboardInterrupt:
        try:
            transport.run_script(CANCEL_DOWNLOAD_SCRIPT, [pidfile], timeout=30)
        except GpumodError:
            pass
        raise Cancelled("download cancelled; nothing was started or recorded") from None
    if code != 0:  # the cause from hf's own output (not its "set HF_DEBUG=1" line)
        from gpumod.hf_errors import download_error

        raise download_error(plan.hf_repo or "", plan.gguf_file, tail,
                             where=transport.label, code=code)


def start(store: Store, req: StartRequest, *, out: Output = lambda s: None,
          log: Output = lambda s: None) -> StartResult:
    """Start a deployment and return once it answers health; see the module docstring."""
    began = time.monotonic()
    api_key = api_key_from_env()
    validate.name(req.name, "service name")
    if req.port is not None:
        validate.port(req.port)
    from gpumod.ops.gateway_routes import claim_aliases
    from gpumod.ops.idle import gateway_extra

    gateway = gateway_extra(req.idle_ttl, req.aliases)
    host = inventory.refresh(store, hostops.resolve_host(store, req.pod))  # GPUs as they are now
    existing = services_table.get(store, req.name)
    if existing is not None:
        raise ConflictError(f"a service named {req.name!r} already exists (on {existing.host})",
                            hint=f"pick another --name, or `pi stop {req.name}` first")
    claim_aliases(store, host.name, req.name, req.model, gateway)
    plan = plan_start(req, host)
    validate.no_secret_in([req.model, plan.args, plan.env], [api_key, os.environ.get("HF_TOKEN")],
                          "engine's arguments or environment")
    for warning in plan.warnings:
        out(f"warning: {warning}")
    if plan.gpu_count > len(host.gpus):
        have = f"{len(host.gpus)} GPU(s)" if host.gpus else "no GPU (nvidia-smi lists none)"
        hint = ("use a pod with GPUs (`pi pods setup NAME \"ssh ...\"`), or a GGUF model "
                "with llama.cpp on this machine's CPU" if not host.gpus
                else "lower --gpus, or use a pod with more GPUs")
        raise CapacityError(f"{plan.engine.name} needs {plan.gpu_count} GPU(s) but "
                            f"{host.name} has {have}", hint=hint)
    if plan.selection and plan.selection.min_engine_version and plan.engine.name == "vllm":
        ok = version_ok(str(host.engine_env.get("vllm_version") or ""),
                        plan.selection.min_engine_version)
        if ok is False:
            out(f"warning: {plan.known.name if plan.known else plan.model} needs vLLM >= "
                f"{plan.selection.min_engine_version}; {host.name} has "
                f"{host.engine_env.get('vllm_version')}")
    transport = hostops.transport_for(host)
    pre = preflight(transport, host, plan)
    model_path: str | None = pre.model_path
    if plan.hf_repo and not (pre.model_path or pre.cached):
        if not req.download:
            raise NotFoundError(f"{plan.hf_repo} is not in the Hugging Face cache on "
                                f"{transport.label}", hint="drop --no-download to fetch it")
        download(transport, host, plan, pre, req.name, out)
        pre2 = preflight(transport, host, plan)
        model_path = pre2.model_path
        if plan.gguf_file and not model_path:
            raise EngineError(f"{plan.gguf_file} is not in the cache after the download")
        pre.listening = pre2.listening
    cached = bool(plan.hf_repo)

    draft = ServiceSpec(name=req.name, host=host.name, engine=plan.engine.name,
                        model=req.model, port=0, args=tuple(plan.args), env=dict(plan.env),
                        health_path=req.health_path or plan.engine.health.path,
                        extra={"origin": records.ORIGIN_START, "support": plan.support,
                               **({"vllm_version": req.vllm_version} if req.vllm_version else {}),
                               # --gpus 0: on the CPU even where the host has GPUs
                               **({"cpu": True} if req.gpus == 0 else {}),
                               "catalog": plan.known.id if plan.known else None,
                               "config": plan.selection.config.label() if plan.selection
                               else None,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime()), **gateway})
    deadline = req.deadline or DEFAULT_DEADLINE.get(plan.engine.name, 300.0)
    what = f"pi start {req.name}"
    with locks.host_lock(host.name, shared=True, what=what, progress=out), \
            lifecycle.held(req.name, what, progress=out):
        # recorded 'starting' (port and GPUs taken) before anything runs on the host
        reserved = records.reserve(store, draft, host, gpu_count=plan.gpu_count,
                                   listening=pre.listening, port=req.port)
        try:
            rt = _runtime(store, host, transport, plan, pre, reserved, model_path, cached,
                          api_key)
        except BaseException:
            machine.forget(store, req.name)
            raise
        done = launcher.launch(store, rt, timeout=deadline, new=True, force=req.force,
                               log=log, progress=out)
    notes = plan.selection.notes if plan.selection else ""
    return StartResult(done, str(done.extra["url"]), str(done.extra["served_model"]),
                       mask(api_key), plan.support, notes, plan.warnings,
                       time.monotonic() - began)


def _runtime(store: Store, host: Host, transport: Transport, plan: StartPlan, pre: Preflight,
             reserved: ServiceSpec, model_path: str | None, cached: bool, api_key: str
             ) -> Runtime:
    """The reserved deployment's runtime: what the pre-flight found on the host added."""
    bind = bind_address(reserved, host)
    base_env = plan.engine.env(reserved)
    env = {"PATH": pre.path}
    if host.engine_env.get("venv") and "VIRTUAL_ENV" not in base_env:
        env["VIRTUAL_ENV"] = str(host.engine_env["venv"])
    if pre.hf_home:
        env["HF_HOME"] = pre.hf_home
    if cached and plan.engine.name == "vllm" and "HF_HUB_OFFLINE" not in base_env:
        env["HF_HUB_OFFLINE"] = "1"  # the model is in the cache: no network needed
    url = endpoint_url(host, reserved.port)
    served = plan.engine.served_model(reserved)
    spec = reserved.with_(extra={
        **reserved.extra, "url": url, "served_model": served, "bind": bind,
        "service_dir": service_dir(host, reserved.name),
        **({"model_path": model_path} if model_path else {})})
    manifest = {"name": spec.name, "host": host.name, "engine": plan.engine.name,
                "model": spec.model, "served_model": served, "port": spec.port,
                "gpus": list(spec.gpus), "url": url, "health_path": spec.health_path}
    options = LaunchOptions(
        binary=pre.binary if plan.engine.binary or plan.engine.name == "command" else None,
        model_path=model_path if plan.engine.name == "llamacpp" else None,
        env=env, manifest=manifest)
    return runtime(store, spec, transport=transport, host=host, options=options,
                   secrets=plan.engine.secret_env_for(api_key))


# -- list ------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """What `pi list --prune` forgot, and what it had to keep (name, why)."""

    removed: list[str]
    kept: list[tuple[str, str]]


def prune(store: Store, statuses: Sequence[ServiceStatus]) -> PruneResult:
    """Forget deployments whose process is gone (never definitions, unreachable or unknown).

    A deployment whose stop was not confirmed ('stopping', process gone) is finished too.
    One recorded 'stopped' is kept: it was put to rest on purpose (idle TTL, the gateway
    made room), and the gateway starts it again on the next request; `pi stop` forgets it.
    A record whose cleanup fails, or that another command is changing, is kept and said.
    """
    result = PruneResult([], [])
    for status in statuses:
        if status.state not in ("crashed", "stopped") or not records.is_deployment(status.spec) \
                or status.spec.state == "stopped":
            continue
        name = status.spec.name
        try:
            with lifecycle.changing(store, name, "pi list --prune", wait=0) as spec:
                lifecycle.stop_held(store, spec, forget=True, timeout=5)
        except GpumodError as exc:
            result.kept.append((name, exc.message))
            continue
        store.log_event("prune", host=status.spec.host, service=name)
        result.removed.append(name)
    return result


# -- stop ------------------------------------------------------------------------------


def stop(store: Store, name: str, *, timeout: float = STOP_TIMEOUT,
         progress: Output = lambda s: None) -> StopResult:
    """Stop one deployment (its dependents first); the record goes only once the process
    and its port are gone (a `gpumod service` definition is kept, 'stopped')."""
    results = lifecycle.stop(store, name, timeout=timeout, progress=progress)
    return next(r for r in results if r.name == name)


def services_on(store: Store, pod: str | None) -> tuple[Host, list[ServiceSpec]]:
    host = hostops.resolve_host(store, pod)
    return host, records.list_services(store, host.name)


# -- logs and tunnel ---------------------------------------------------------------------


def logs(store: Store, name: str, *, lines: int = 100, follow: bool = False,
         write: Callable[[bytes], None], node: str | None = None) -> int:
    """Print (and follow) a deployment's log; Ctrl+C stops following, not the service.

    node: a pod of a multi-node deployment: that pod's Ray node log instead of vLLM's.
    """
    if lines < 0:
        raise UsageError("-n must be 0 or more")
    spec = records.get_service(store, name)
    if node is not None:
        from gpumod.ops import multinode

        host, log_path = multinode.log_target(store, spec, node)
    else:
        host = hostops.get_host(store, spec.host)
        log_path = posixpath.join(service_dir(host, name), "service.log")
    transport = hostops.transport_for(host)
    try:
        with transport.stream(tail_argv(log_path, lines, follow)) as stream:
            for chunk in stream.iter_bytes():
                write(chunk)
    except KeyboardInterrupt:
        return 0
    except TransportError as exc:
        raise type(exc)(f"could not read the log of {name}: {exc.message}",
                        hint=f"check the pod is up (`pi ssh {host.name} true`)") from exc
    code = stream.returncode or 0
    if code == 3:
        raise NotFoundError(f"no log for {name} on {host.name} yet",
                            hint="the service folder is gone; `pi list --prune` tidies up"
                            if records.is_deployment(spec) else
                            f"it has not run yet: gpumod service start {name}")
    return code


def tunnel_argv(host: Host, remote_port: int, local_port: int, bind: str) -> list[str]:
    """ssh -N -L local:remote over the pod's own SSH options (its own connection)."""
    target = host.ssh_target()
    return ["ssh", "-o", "StrictHostKeyChecking=accept-new", *target.options,
            "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
            "-N", "-L", f"127.0.0.1:{local_port}:{probe_address(bind)}:{remote_port}",
            "--", target.destination]


def tunnel_plan(store: Store, name: str, local_port: int | None) -> tuple[ServiceSpec, Host,
                                                                           list[str], str]:
    spec = records.get_service(store, name)
    host = hostops.get_host(store, spec.host)
    if host.is_local:
        raise UsageError(f"{name} runs on this machine: no tunnel needed",
                         hint=f"use {spec.extra.get('url') or endpoint_url(host, spec.port)}")
    port = local_port if local_port is not None else _free_local_port(spec.port)
    validate.port(port)
    argv = tunnel_argv(host, spec.port, port, str(spec.extra.get("bind") or "0.0.0.0"))  # noqa: S104
    return spec, host, argv, f"http://127.0.0.1:{port}/v1"


def _free_local_port(preferred: int) -> int:
    import socket

    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise CapacityError("no free local port")

