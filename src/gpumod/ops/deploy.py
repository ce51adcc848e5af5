"""Deployments: start, list, stop, logs, tunnel (Pi's model commands), on any host.

start:  validate everything locally -> one pre-flight round trip to the host
        (engine binary, model on disk or in the HF cache, listening ports) ->
        download into the host's HF cache if needed (progress; Ctrl+C cancels
        and kills the download on the host) -> reserve the record with a free
        port and GPUs in ONE transaction -> launch under the process
        supervisor (secrets by stdin into a 0600 file) -> wait for HTTP health
        ON the host with a deadline while the engine log streams -> record it.
        Any failure or Ctrl+C after the launch stops the whole process group,
        removes the service folder and the reservation: nothing half-recorded,
        nothing left running.
list:   one round trip per host (all services in one status script), hosts in
        parallel threads; an unreachable host marks its services 'unreachable'
        and never deletes anything.
stop:   TERM the process group, KILL after a timeout, confirm the port is free,
        then drop the record. A failed SSH call keeps the record.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.catalog.models import (
    KnownModel,
    Selection,
    find_model,
    require_selection,
    version_ok,
)
from gpumod.engines.base import Engine, get_engine, parse_context, parse_memory
from gpumod.errors import (
    Cancelled,
    CapacityError,
    ConfigError,
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
from gpumod.ops import probe as probes
from gpumod.ops import services as records
from gpumod.ops.endpoints import endpoint_url
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.base import LaunchPlan
from gpumod.supervise.process import ProcessSupervisor, tail_argv

Output = Callable[[str], None]

DEFAULT_DEADLINE = {"vllm": 1200.0, "llamacpp": 300.0, "command": 300.0}
STOP_TIMEOUT = 20.0

# -- pre-flight: one round trip ------------------------------------------------
PREFLIGHT_SCRIPT = r"""
prefix=$1; binary=$2; kind=$3; model=$4; file=$5; hfhome=$6
if [ -n "$prefix" ]; then PATH="$prefix:$PATH"; export PATH; fi
echo "path=$PATH"
echo "home=$HOME"
if [ -n "$binary" ]; then
  b=$(command -v -- "$binary" 2>/dev/null) && echo "binary=$b"
fi
h=${hfhome:-${HF_HOME:-$HOME/.cache/huggingface}}
echo "hf_home=$h"
if command -v hf >/dev/null 2>&1; then echo "hf=hf"
elif command -v huggingface-cli >/dev/null 2>&1; then echo "hf=huggingface-cli"; fi
case $kind in
  path)
    p=$model
    case $p in "~/"*) p="$HOME/${p#"~/"}" ;; esac
    if [ -e "$p" ]; then echo "model_path=$p"; fi ;;
  hf)
    d="$h/hub/models--$(printf '%s' "$model" | sed 's|/|--|g')"
    for s in "$d"/snapshots/*/; do
      [ -d "$s" ] || continue
      if [ -n "$file" ]; then
        if [ -e "$s$file" ]; then echo "model_path=$s$file"; break; fi
      elif [ -n "$(ls -A "$s" 2>/dev/null)" ]; then echo "cached=$s"; break; fi
    done ;;
esac
command -v curl >/dev/null 2>&1 && echo "probe=curl"
command -v python3 >/dev/null 2>&1 && echo "probe=python3"
""" + probes.LISTEN_LINES

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
class Preflight:
    path: str = ""
    home: str = ""
    binary: str | None = None
    hf_home: str = ""
    hf_cli: str | None = None
    model_path: str | None = None
    cached: str | None = None
    probe: list[str] = field(default_factory=list)
    listening: set[int] = field(default_factory=set)


def parse_preflight(stdout: str) -> Preflight:
    pre = Preflight()
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "path":
            pre.path = value
        elif key == "home":
            pre.home = value
        elif key == "binary":
            pre.binary = value
        elif key == "hf_home":
            pre.hf_home = value
        elif key == "hf":
            pre.hf_cli = value
        elif key == "model_path":
            pre.model_path = value
        elif key == "cached":
            pre.cached = value
        elif key == "probe":
            pre.probe.append(value)
    pre.listening = probes.parse_listening(stdout)
    return pre


# -- helpers -----------------------------------------------------------------------


def mask(secret: str) -> str:
    """Never print a key: '********wxyz' for long keys, '********' for short ones."""
    return "********" + (secret[-4:] if len(secret) >= 16 else "")


def api_key_from_env() -> str:
    key = os.environ.get("PI_API_KEY", "")
    if not key.strip():
        raise ConfigError("PI_API_KEY is not set",
                          hint="export PI_API_KEY=<any secret string>; clients send it as "
                               "their API key")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ConfigError("PI_API_KEY contains a newline or control character")
    return key


def bind_address(host: Host) -> str:
    """Pods serve on all interfaces (reached from outside); `local` on loopback only."""
    return "127.0.0.1" if host.is_local else "0.0.0.0"  # noqa: S104 - pods are reached remotely


def probe_address(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "127.0.0.1", "") else bind  # noqa: S104


def service_dir(host: Host, name: str) -> str:
    return posixpath.join(hostops.host_root(host), "services", name)


def launch_plan(spec: ServiceSpec, host: Host, argv: Sequence[str] = (),
                env: dict[str, str] | None = None) -> LaunchPlan:
    return LaunchPlan(service=spec.name, argv=tuple(argv), env=dict(env or {}),
                      service_dir=service_dir(host, spec.name))


def supervisor_for(spec: ServiceSpec, transport: Transport, manifest: dict | None = None):
    if spec.supervisor == "systemd":
        from gpumod.supervise.systemd import SystemdSupervisor  # type: ignore[attr-defined]

        return SystemdSupervisor(transport)  # type: ignore[call-arg]
    return ProcessSupervisor(transport, manifest=manifest)


def model_kind(engine: str, model: str) -> str:
    """'path' (on the host), 'hf' (a Hugging Face id), or 'none' (command engine)."""
    if engine == "command":
        return "none"
    if model.startswith(("/", "~/")):
        return "path"
    return "hf"


def split_gguf_ref(model: str, known: KnownModel | None) -> tuple[str, str | None]:
    """'owner/repo:file.gguf' -> ('owner/repo', 'file.gguf'); catalog entries know their file."""
    if ":" in model:
        repo, _, file = model.partition(":")
        if not file.lower().endswith(".gguf") or "/" in file or file.startswith("."):
            raise UsageError(f"invalid GGUF reference {model!r}",
                             hint="use OWNER/REPO:FILE.gguf, or a path to a .gguf on the host")
        return repo, file
    return model, known.gguf_file if known else None


def validate_model(model: str) -> None:
    validate.no_control_chars(model, "model")
    if model.startswith(("./", "../")):
        raise UsageError(f"relative model path {model!r} on a pod",
                         hint="give an absolute path (or ~/...) on the pod")
    if model.startswith(("/", "~/")):
        return
    repo = model.split(":", 1)[0]
    if not validate.hf_id(repo):
        raise UsageError(f"invalid model {model!r}",
                         hint="give a Hugging Face id (owner/name) or an absolute path on the host")


# -- start -------------------------------------------------------------------------


@dataclass
class StartRequest:
    model: str
    name: str
    pod: str | None = None
    engine: str | None = None
    memory: str | None = None
    context: str | None = None
    gpus: int | None = None
    port: int | None = None
    custom_args: list[str] | None = None    # everything after --vllm, verbatim
    deadline: float | None = None
    health_path: str | None = None
    download: bool = True


@dataclass
class StartPlan:
    """What start decided before touching the host (pure: unit-tested)."""

    engine: Engine
    model: str                  # as given (HF id or path)
    hf_repo: str | None
    gguf_file: str | None
    args: list[str]
    env: dict[str, str]
    gpu_count: int
    known: KnownModel | None
    selection: Selection | None
    warnings: list[str] = field(default_factory=list)

    @property
    def support(self) -> str:
        if self.known is None:
            return "possibly works"
        return "supported" if self.selection and self.selection.type_matched else \
            "supported (config written for another GPU type)"


def plan_start(req: StartRequest, host: Host) -> StartPlan:
    """Engine, args, env and GPU count for a request on a host; raises UsageError."""
    validate.name(req.name, "service name")
    if host.is_local and req.model.startswith(("./", "../")):
        req.model = os.path.abspath(req.model)  # local paths are relative to where you are
    validate_model(req.model)
    known = find_model(req.model.split(":", 1)[0]) if model_kind("vllm", req.model) == "hf" \
        else None
    engine_name = req.engine or (known.engine if known else None)
    if engine_name is None:
        engine_name = "llamacpp" if req.model.lower().endswith(".gguf") else "vllm"
    engine = get_engine(engine_name)
    if engine_name == "docker":
        raise UsageError("the docker engine is started through `gpumod service`, not `pi start`")
    if known is not None and known.engine != engine_name:
        known = None  # the catalog entry is for another engine: treat as unknown
    warnings: list[str] = []
    selection: Selection | None = None
    env: dict[str, str] = {}
    custom = req.custom_args is not None and (len(req.custom_args) > 0 or engine_name ==
                                               "command")
    default_count = 1 if (engine_name == "vllm" or host.gpus) else 0

    if custom:
        args = list(req.custom_args or [])
        ignored = [flag for flag, value in (("--memory", req.memory), ("--context", req.context))
                   if value is not None]
        if req.gpus is not None and engine_name != "command":
            ignored.append("--gpus")
        if ignored:
            warnings.append(f"{', '.join(ignored)} ignored: the args after --vllm are passed "
                            "verbatim")
        if engine_name == "vllm":
            gpu_count = engine.gpu_count(args)
        elif engine_name == "command":
            gpu_count = req.gpus if req.gpus is not None else (1 if host.gpus else 0)
        else:
            gpu_count = default_count
        if known is not None:
            warnings.append(f"custom args: the catalog configuration for {known.name} "
                            "is not applied")
    else:
        if known is not None:
            selection = require_selection(known, host.gpus, req.gpus)
            args = list(selection.config.args)
            env = dict(selection.config.env)
            gpu_count = selection.config.gpus
            if not selection.type_matched:
                warnings.append(f"{known.name}: no configuration written for "
                                f"{host.gpus[0].name if host.gpus else 'this host'}; using "
                                f"the {selection.config.label()} one")
        else:
            args = []
            gpu_count = req.gpus if req.gpus is not None else default_count
            if engine_name == "vllm" and gpu_count > 1:
                args = ["--tensor-parallel-size", str(gpu_count)]
            if engine_name == "vllm" and gpu_count < 1:
                raise UsageError("vLLM needs at least one GPU (--gpus 1 or more)")
        if req.memory is not None:
            args = engine.apply_memory(args, parse_memory(req.memory))
        if req.context is not None:
            args = engine.apply_context(args, parse_context(req.context))
    if engine_name == "vllm" and engine.gpu_count(args) != gpu_count and not custom:
        gpu_count = engine.gpu_count(args)
    hf_repo: str | None = None
    gguf_file: str | None = None
    if model_kind(engine_name, req.model) == "hf":
        if engine_name == "llamacpp":
            hf_repo, gguf_file = split_gguf_ref(req.model, known)
            if gguf_file is None:
                raise UsageError(f"which GGUF file of {req.model} should llama.cpp serve?",
                                 hint=f"use {req.model}:FILE.gguf, or a path to a .gguf file")
        else:
            if ":" in req.model:
                raise UsageError(f"invalid model {req.model!r}",
                                 hint="OWNER/REPO:FILE is for GGUF files with --engine llamacpp")
            hf_repo = req.model
    elif engine_name == "llamacpp" and not req.model.lower().endswith(".gguf"):
        raise UsageError(f"llama.cpp serves a .gguf file, not {req.model!r}",
                         hint="give the path of a .gguf file on the host, or --engine vllm")
    spec = ServiceSpec(name=req.name, host=host.name, engine=engine_name, model=req.model,
                       port=0, args=tuple(args))
    engine.validate(spec)
    return StartPlan(engine=engine, model=req.model, hf_repo=hf_repo, gguf_file=gguf_file,
                     args=args, env=env, gpu_count=gpu_count, known=known,
                     selection=selection, warnings=warnings)


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


def _engine_path_prefix(host: Host) -> str:
    dirs = [str(d) for d in host.engine_env.get("bin_dirs") or []]
    venv = host.engine_env.get("venv")
    if venv and not dirs:
        dirs = [posixpath.join(str(venv), "bin")]
    return ":".join(dirs)


def _hf_home(host: Host) -> str:
    return str(host.engine_env.get("hf_cache") or host.models_path or "")


def preflight(transport: Transport, host: Host, plan: StartPlan) -> Preflight:
    binary = plan.engine.binary or (plan.args[0] if plan.args else "")
    kind = model_kind(plan.engine.name, plan.model)
    model = plan.hf_repo if kind == "hf" else plan.model
    result = transport.run_script(
        PREFLIGHT_SCRIPT,
        [_engine_path_prefix(host), binary, kind, model or "", plan.gguf_file or "",
         _hf_home(host)], timeout=60)
    result.check(f"{transport.label}: pre-flight check")
    pre = parse_preflight(result.stdout)
    if binary and pre.binary is None:
        where = "this machine" if host.is_local else f"pod {host.name}"
        hint = {"vllm": f"run `pi pods setup {host.name} ...` to install vLLM",
                "llamacpp": "install llama.cpp's llama-server and put it on PATH "
                            "(scripts/build-llama-server.sh builds one)",
                }.get(plan.engine.name, "install it on the host, or give its absolute path")
        if host.is_local and plan.engine.name == "vllm":
            hint = "install vLLM (pip install vllm) and put it on PATH"
        raise EngineError(f"{binary} is not installed on {where}", hint=hint)
    if kind == "path" and pre.model_path is None:
        where = "this machine" if host.is_local else f"pod {host.name}"
        raise NotFoundError(f"model path {plan.model} does not exist on {where}",
                            hint="give an absolute path on the host, or a Hugging Face id")
    if not pre.probe:
        raise EngineError(f"{transport.label}: neither curl nor python3 is installed, so "
                          "health cannot be checked", hint="install curl on the host")
    return pre


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
    proc = transport.popen(argv, stdin=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((os.environ.get("HF_TOKEN", "") + "\n").encode())
        proc.stdin.close()
        tail: deque[str] = deque(maxlen=20)
        buffer = b""
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else \
                proc.stdout.read(4096)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    tail.append(text)
                    out(text)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        try:
            transport.run_script(CANCEL_DOWNLOAD_SCRIPT, [pidfile], timeout=30)
        except GpumodError:
            pass
        raise Cancelled("download cancelled; nothing was started or recorded") from None
    if code == 255 and not host.is_local:
        raise TransportError(f"{transport.label}: the connection dropped during the download")
    if code != 0:
        detail = next((line for line in reversed(tail) if line.strip()), f"exit code {code}")
        raise EngineError(f"downloading {plan.hf_repo} failed: {detail}",
                          hint="check HF_TOKEN and that you have access to the model")


def start(store: Store, req: StartRequest, *, out: Output = lambda s: None,
          log: Output = lambda s: None) -> StartResult:
    """Start a deployment and return once it answers health; see the module docstring."""
    began = time.monotonic()
    api_key = api_key_from_env()
    validate.name(req.name, "service name")
    if req.port is not None:
        validate.port(req.port)
    host = hostops.resolve_host(store, req.pod)
    if store.query_one("SELECT 1 FROM services WHERE name = ?", (req.name,)):
        existing = records.get_service(store, req.name)
        raise ConflictError(f"a service named {req.name!r} already exists (on {existing.host})",
                            hint=f"pick another --name, or `pi stop {req.name}` first")
    plan = plan_start(req, host)
    for warning in plan.warnings:
        out(f"warning: {warning}")
    if plan.gpu_count > len(host.gpus):
        have = f"{len(host.gpus)} GPU(s) recorded" if host.gpus else "no GPU recorded"
        hint = ("run `gpumod init` to detect this machine's GPUs" if host.is_local
                else f"re-run `pi pods setup {host.name} ...` to detect its GPUs")
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

    spec = ServiceSpec(name=req.name, host=host.name, engine=plan.engine.name,
                       model=req.model, port=0, args=tuple(plan.args), env=dict(plan.env),
                       health_path=req.health_path or plan.engine.health.path)
    reserved = records.reserve(store, spec, host, gpu_count=plan.gpu_count,
                               listening=pre.listening, port=req.port)
    bind = bind_address(host)
    env = plan.engine.env(reserved)
    env["PATH"] = pre.path
    if host.engine_env.get("venv"):
        env.setdefault("VIRTUAL_ENV", str(host.engine_env["venv"]))
    if pre.hf_home:
        env["HF_HOME"] = pre.hf_home
    if cached and plan.engine.name == "vllm":
        env.setdefault("HF_HUB_OFFLINE", "1")  # the model is in the cache: no network needed
    argv = plan.engine.argv(reserved, bind=bind,
                            model_path=model_path if plan.engine.name == "llamacpp" else None,
                            binary=pre.binary if plan.engine.binary else None)
    if plan.engine.name == "command" and pre.binary:
        argv[0] = pre.binary
    url = endpoint_url(host, reserved.port)
    served = plan.engine.served_model(reserved)
    extra: dict[str, Any] = {
        "url": url, "served_model": served, "bind": bind, "support": plan.support,
        "catalog": plan.known.id if plan.known else None,
        "config": plan.selection.config.label() if plan.selection else None,
        "argv": argv, "service_dir": service_dir(host, req.name),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if model_path:
        extra["model_path"] = model_path
    manifest = {"name": req.name, "host": host.name, "engine": plan.engine.name,
                "model": req.model, "served_model": served, "port": reserved.port,
                "gpus": list(reserved.gpus), "url": url, "health_path": reserved.health_path}
    lplan = launch_plan(reserved, host, argv, env)
    supervisor = ProcessSupervisor(transport, manifest=manifest)
    deadline = req.deadline or DEFAULT_DEADLINE.get(plan.engine.name, 300.0)
    launched = False
    try:
        out(f"starting {req.name}: {plan.engine.name} {req.model} on {host.name} port "
            f"{reserved.port}, GPU(s) {','.join(map(str, reserved.gpus)) or 'none'}")
        pid = supervisor.start(lplan, plan.engine.secret_env_for(api_key))
        launched = True
        wait_healthy(transport, plan.engine, lplan, reserved.port, reserved.health_path,
                     probe_address(bind), deadline, log, supervisor)
        extra["pid"] = pid
        done = records.finish(store, reserved.with_(pid=pid, env=env, extra=extra))
    except BaseException as exc:
        cleanup_error: str | None = None
        if launched:
            try:
                supervisor.stop(lplan, timeout=10, forget=True)
            except GpumodError as stop_exc:
                cleanup_error = stop_exc.message
        try:
            records.drop(store, req.name)
        except Exception:  # the original error matters more than a failed cleanup
            pass
        if isinstance(exc, KeyboardInterrupt):
            raise Cancelled("start cancelled; the engine was stopped and nothing recorded"
                            + (f" (cleanup: {cleanup_error})" if cleanup_error else "")) from None
        if cleanup_error and isinstance(exc, GpumodError):
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + f"cleanup: {cleanup_error}"
        raise
    store.log_event("start", host=host.name, service=req.name,
                    detail=f"{plan.engine.name} {req.model} port {done.port}")
    _calibrate(store, done, host, supervisor, lplan)
    notes = plan.selection.notes if plan.selection else ""
    return StartResult(done, url, served, mask(api_key), plan.support, notes, plan.warnings,
                       time.monotonic() - began)


def wait_healthy(transport: Transport, engine: Engine, plan: LaunchPlan, port: int,
                 path: str, probe_host: str, deadline: float, log: Output,
                 supervisor: ProcessSupervisor) -> None:
    """Stream the engine log until its health answers; EngineError with its own errors if not."""
    proc = transport.popen(probes.wait_argv(plan.service_dir, port, path, probe_host, deadline,
                                            engine.health.ok_codes))
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
        return
    text = supervisor.read_log(plan, 400)
    errors = engine.error_lines(text)
    detail = " | ".join(errors[-3:]) if errors else "no output"
    if code == 3:
        raise EngineError(f"{engine.name} exited during start: {detail}",
                          hint=f"the engine's log: {plan.log_path}")
    if code == 4:
        raise EngineError(f"{engine.name} was not healthy within {deadline:g}s: {detail}",
                          hint="a big model can need longer: --timeout SECONDS")
    if code == 255:
        raise TransportError(f"{transport.label}: the connection dropped while waiting "
                             "for health")
    raise EngineError(f"waiting for {engine.name} failed (exit {code}): {detail}")


def _calibrate(store: Store, spec: ServiceSpec, host: Host, supervisor: ProcessSupervisor,
               plan: LaunchPlan) -> None:
    """Feed the planner what the engine reported (optional; never fails a start)."""
    try:
        from gpumod.planner import calibration
    except ImportError:
        return
    hook = getattr(calibration, "after_start", None)
    try:
        if hook is not None:
            hook(store, spec, host, supervisor.read_log(plan, 2000))
            return
        actual = calibration.parse_log(spec.engine, supervisor.read_log(plan, 2000))
        if actual:
            calibration.record_calibration(
                store, model=spec.model, engine=spec.engine,
                engine_version=str(host.engine_env.get("vllm_version") or ""),
                gpu_name=host.gpus[0].name if host.gpus else "",
                args_key=" ".join(spec.args), estimate={}, actual=actual)
    except Exception as exc:  # calibration is best effort: never fail a healthy start
        store.log_event("calibration-failed", host=host.name, service=spec.name,
                        detail=f"{type(exc).__name__}: {exc}")


# -- list ------------------------------------------------------------------------------

STATES = ("running", "starting", "unhealthy", "crashed", "stopped", "unreachable", "unknown")


@dataclass
class ServiceStatus:
    spec: ServiceSpec
    state: str
    detail: str
    url: str
    http: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.spec.name, "model": self.spec.model, "engine": self.spec.engine,
                "pod": self.spec.host, "port": self.spec.port, "gpus": list(self.spec.gpus),
                "url": self.url, "state": self.state, "detail": self.detail,
                "pid": self.spec.pid, "served_model": self.spec.extra.get("served_model",
                                                                          self.spec.model)}


def classify(spec: ServiceSpec, probe: probes.Probe | None, engine: Engine | None) -> tuple[str,
                                                                                           str]:
    if probe is None:
        return "unknown", "the host sent no answer for this service"
    ok = engine.health.ok_codes if engine else (200,)
    loading = engine.health.loading_codes if engine else ()
    if probe.process == "alive":
        if probe.http in ok:
            return "running", f"pid {probe.pid}, health {probe.http}"
        if spec.state == "starting" or probe.http in loading:
            return "starting", f"pid {probe.pid}, health {probe.http or 'no answer'}"
        return "unhealthy", f"pid {probe.pid} alive, health {probe.http or 'no answer'}"
    if probe.process == "stopped":
        return "stopped", "stopped outside gpumod"
    if probe.process == "missing":
        return "crashed", "service folder missing on the host"
    return "crashed", f"process {probe.pid or ''} is gone".replace("  ", " ")


def host_status(store: Store, host: Host, specs: Sequence[ServiceSpec]) -> list[ServiceStatus]:
    """One round trip for every service of a host."""
    if not specs:
        return []
    items = []
    for spec in specs:
        bind = str(spec.extra.get("bind") or bind_address(host))
        items.append((service_dir(host, spec.name), spec.port, spec.health_path,
                      probe_address(bind)))
    try:
        transport = hostops.transport_for(host)
        found = probes.probe_host(transport, items)
    except TransportError as exc:
        return [ServiceStatus(s, "unreachable", exc.message, str(s.extra.get("url") or ""))
                for s in specs]
    except GpumodError as exc:
        return [ServiceStatus(s, "unknown", exc.message, str(s.extra.get("url") or ""))
                for s in specs]
    statuses = []
    for spec in specs:
        probe = found.get(service_dir(host, spec.name))
        try:
            engine = get_engine(spec.engine)
        except UsageError:
            engine = None
        state, detail = classify(spec, probe, engine)
        statuses.append(ServiceStatus(spec, state, detail,
                                      str(spec.extra.get("url") or endpoint_url(host, spec.port)),
                                      probe.http if probe else 0))
    return statuses


def list_status(store: Store, host_names: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Real state of deployments: hosts in parallel, one round trip per host."""
    specs = records.list_services(store)
    hosts = {h.name: h for h in hostops.list_hosts(store)}
    wanted = list(host_names) if host_names is not None else list(hosts)
    by_host: dict[str, list[ServiceSpec]] = {}
    for spec in specs:
        if spec.host in wanted:
            by_host.setdefault(spec.host, []).append(spec)
    if not by_host:
        return []
    results: dict[str, list[ServiceStatus]] = {}
    with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
        futures = {name: pool.submit(host_status, store, hosts[name], group)
                   for name, group in by_host.items()}
        for name, future in futures.items():
            results[name] = future.result()
    return [status for name in by_host for status in results[name]]


def prune(store: Store, statuses: Sequence[ServiceStatus]) -> list[str]:
    """Forget records whose process is gone (never unreachable or unknown ones)."""
    removed = []
    for status in statuses:
        if status.state not in ("crashed", "stopped"):
            continue
        host = hostops.get_host(store, status.spec.host)
        try:
            ProcessSupervisor(hostops.transport_for(host)).stop(
                launch_plan(status.spec, host), timeout=5, forget=True)
        except GpumodError:
            continue
        records.drop(store, status.spec.name)
        store.log_event("prune", host=host.name, service=status.spec.name)
        removed.append(status.spec.name)
    return removed


# -- stop ------------------------------------------------------------------------------


@dataclass
class StopResult:
    name: str
    host: str
    outcome: str  # stopped | killed | not-running


def stop(store: Store, name: str, *, timeout: float = STOP_TIMEOUT) -> StopResult:
    """Stop one deployment; the record goes only once the process and its port are gone."""
    spec = records.get_service(store, name)
    host = hostops.get_host(store, spec.host)
    transport = hostops.transport_for(host)
    plan = launch_plan(spec, host)
    outcome = supervisor_for(spec, transport).stop(plan, timeout=timeout, forget=True)
    end = time.monotonic() + 5
    while spec.port in probes.listening_ports(transport):
        if time.monotonic() > end:
            raise EngineError(f"{name} stopped but port {spec.port} on {host.name} is still "
                              "in use", hint="another program may hold it; the record is kept")
        time.sleep(0.2)
    records.drop(store, name)
    store.log_event("stop", host=host.name, service=name, detail=outcome)
    return StopResult(name, host.name, outcome or "stopped")


def services_on(store: Store, pod: str | None) -> tuple[Host, list[ServiceSpec]]:
    host = hostops.resolve_host(store, pod)
    return host, records.list_services(store, host.name)


# -- logs and tunnel ---------------------------------------------------------------------


def logs(store: Store, name: str, *, lines: int = 100, follow: bool = False,
         write: Callable[[bytes], None]) -> int:
    """Print (and follow) a deployment's log; Ctrl+C stops following, not the service."""
    if lines < 0:
        raise UsageError("-n must be 0 or more")
    spec = records.get_service(store, name)
    host = hostops.get_host(store, spec.host)
    transport = hostops.transport_for(host)
    plan = launch_plan(spec, host)
    proc = transport.popen(tail_argv(plan.log_path, lines, follow))
    assert proc.stdout is not None
    try:
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else \
                proc.stdout.read(65536)
            if not chunk:
                break
            write(chunk)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    if code == 3:
        raise NotFoundError(f"no log for {name} on {host.name}",
                            hint="the service folder is gone; `pi list --prune` tidies up")
    if code == 255 and not host.is_local:
        raise TransportError(f"pod {host.name}: could not read the log (ssh failed)")
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

