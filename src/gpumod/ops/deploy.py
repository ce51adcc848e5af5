"""Deployments: start, list, stop, logs, tunnel (Pi's model commands), on any host.

start:  validate everything locally -> one pre-flight round trip to the host
        (engine binary, model on disk or in the HF cache, listening ports) ->
        download into the host's HF cache if needed (progress; Ctrl+C cancels
        and kills the download on the host) -> reserve the record with a free
        port and GPUs in ONE transaction -> the one launch path shared with
        `gpumod service start` (ops.launch.launch: planner admission with the
        GPU figures the pre-flight read, launch under the process supervisor,
        health wait ON the host while the log streams, record, calibration).
        Any failure or Ctrl+C after the reservation stops the whole process
        group, removes the service folder and the reservation: nothing
        half-recorded, nothing left running.
list:   ops.states (one round trip per host, hosts in parallel; an unreachable
        host marks its services 'unreachable' and never deletes anything);
        --prune forgets deployments whose process is gone (never definitions).
stop:   TERM the process group, KILL after a timeout, confirm the port is free,
        then drop the record (a `gpumod service` definition is kept, 'stopped').
        A failed SSH call keeps the record.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
from gpumod.hosts.gpus import GPU_FIELDS, GPUUsage, parse_gpu_csv
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hostops
from gpumod.ops import launch as launcher
from gpumod.ops import probe as probes
from gpumod.ops import services as records
from gpumod.ops.endpoints import endpoint_url
from gpumod.ops.launch import LaunchOptions, probe_address, service_dir
from gpumod.ops.states import ServiceStatus
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.process import tail_argv

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
if command -v nvidia-smi >/dev/null 2>&1 &&
   g=$(nvidia-smi --query-gpu=""" + GPU_FIELDS + r""" --format=csv,noheader,nounits 2>/dev/null); then
  echo "nvidia_smi=ok"; printf '%s\n' "$g" | sed 's/^/gpu=/'
fi
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
    usage: list[GPUUsage] | None = None     # live GPU figures; None without nvidia-smi


# `key=value` lines of the preflight script -> the Preflight field they set.
_PREFLIGHT_FIELDS = {"path": "path", "home": "home", "binary": "binary", "hf_home": "hf_home",
                     "hf": "hf_cli", "model_path": "model_path", "cached": "cached"}


def parse_preflight(stdout: str) -> Preflight:
    pre = Preflight()
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key in _PREFLIGHT_FIELDS:
            setattr(pre, _PREFLIGHT_FIELDS[key], value)
        elif key == "probe":
            pre.probe.append(value)
        elif key == "nvidia_smi":
            pre.usage = []
    if pre.usage is not None:
        try:
            pre.usage = parse_gpu_csv("\n".join(line[4:] for line in stdout.splitlines()
                                                if line.startswith("gpu=")))
        except ValueError:
            pre.usage = None
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
    force: bool = False                     # start even where the planner says it won't fit
    idle_ttl: str | None = None             # gateway/watch idle TTL (10m, 90s, never)
    aliases: tuple[str, ...] = ()           # other `model` names the gateway routes here


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
    from gpumod.ops.idle import gateway_extra

    gateway = gateway_extra(req.idle_ttl, req.aliases)
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

    draft = ServiceSpec(name=req.name, host=host.name, engine=plan.engine.name,
                        model=req.model, port=0, args=tuple(plan.args), env=dict(plan.env),
                        health_path=req.health_path or plan.engine.health.path,
                        extra={"origin": records.ORIGIN_START, "support": plan.support,
                               "catalog": plan.known.id if plan.known else None,
                               "config": plan.selection.config.label() if plan.selection
                               else None,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime()), **gateway})
    reserved = records.reserve(store, draft, host, gpu_count=plan.gpu_count,
                               listening=pre.listening, port=req.port)
    try:
        rt = _runtime(store, host, transport, plan, pre, reserved, model_path, cached, api_key)
    except BaseException:
        records.drop(store, req.name)
        raise
    deadline = req.deadline or DEFAULT_DEADLINE.get(plan.engine.name, 300.0)
    done = launcher.launch(store, rt, timeout=deadline, new=True, force=req.force,
                           usage=pre.usage, log=log, progress=out)
    notes = plan.selection.notes if plan.selection else ""
    return StartResult(done, str(done.extra["url"]), str(done.extra["served_model"]),
                       mask(api_key), plan.support, notes, plan.warnings,
                       time.monotonic() - began)


def _runtime(store: Store, host: Host, transport: Transport, plan: StartPlan, pre: Preflight,
             reserved: ServiceSpec, model_path: str | None, cached: bool, api_key: str
             ) -> launcher.Runtime:
    """The reserved deployment's runtime: what the pre-flight found on the host added."""
    bind = launcher.bind_address(reserved, host)
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
    return launcher.runtime(store, spec, transport=transport, host=host, options=options,
                            secrets=plan.engine.secret_env_for(api_key))


# -- list ------------------------------------------------------------------------------


def prune(store: Store, statuses: Sequence[ServiceStatus]) -> list[str]:
    """Forget deployments whose process is gone (never definitions, unreachable or unknown)."""
    removed = []
    for status in statuses:
        if status.state not in ("crashed", "stopped") or not records.is_deployment(status.spec):
            continue
        try:
            launcher.runtime(store, status.spec).stop(timeout=5, forget=True)
        except GpumodError:
            continue
        records.drop(store, status.spec.name)
        store.log_event("prune", host=status.spec.host, service=status.spec.name)
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
    rt = launcher.runtime(store, spec, secrets={})
    deployment = records.is_deployment(spec)
    outcome = rt.stop(timeout=timeout, forget=deployment)
    end = time.monotonic() + 5
    while outcome != "not-running" and spec.port in probes.listening_ports(rt.transport):
        if time.monotonic() > end:
            raise EngineError(f"{name} stopped but port {spec.port} on {rt.host.name} is still "
                              "in use", hint="another program may hold it; the record is kept")
        time.sleep(0.2)
    if deployment:
        records.drop(store, name)
    else:  # a `gpumod service` definition stays defined
        records.save_state(store, name, "stopped", None)
    store.log_event("stop", host=rt.host.name, service=name, detail=outcome)
    return StopResult(name, rt.host.name, outcome or "stopped")


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
    log_path = posixpath.join(service_dir(host, name), "service.log")
    proc = transport.popen(tail_argv(log_path, lines, follow))
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
        raise TransportError(f"pod {host.name}: could not read the log (ssh failed)",
                             hint=f"check the pod is up (`pi ssh {host.name} true`)")
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

