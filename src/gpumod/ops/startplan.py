"""What `pi start` decides before touching a host (pure: unit-tested).

The request as typed, the engine and its args (the catalog's configuration for a known
model, with --memory / --context replacing values, or the args after --vllm verbatim),
the GPU count, the model reference (Hugging Face id, GGUF file, path on the host), and
the checks on names, models and the API key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gpumod import validate
from gpumod.catalog.models import KnownModel, Selection, find_model, require_selection
from gpumod.engines.base import Engine, parse_context, parse_memory
from gpumod.engines.registry import get_engine
from gpumod.errors import ConfigError, NotFoundError, UsageError
from gpumod.hosts.model import Host
from gpumod.spec import ServiceSpec

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
        raise ConfigError("PI_API_KEY contains a newline or control character",
                          hint="export it again as one line of printable characters")
    if key != key.strip():  # HTTP trims header values: no client could send this key
        raise ConfigError("PI_API_KEY begins or ends with whitespace, which no HTTP client "
                          "can send (header values are trimmed)",
                          hint="export PI_API_KEY again without the surrounding spaces")
    if not key.isascii():  # the openai client (httpx) encodes headers as ASCII
        raise ConfigError("PI_API_KEY holds non-ASCII characters, which HTTP clients such as "
                          "the openai client cannot send",
                          hint="use printable ASCII, e.g. python3 -c 'import secrets; "
                               "print(secrets.token_urlsafe(24))'")
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


def local_model_path(model: str) -> str:
    """On this machine a model path is relative to the current directory.

    ./m.gguf, ../m.gguf, m.gguf and dir/m.gguf (when that file exists here) become
    absolute; a Hugging Face id stays as typed. A .gguf name that is no file here is
    refused (it is not a Hugging Face id either).
    """
    if model.startswith(("/", "~")) or ":" in model:
        return model
    if model.startswith(("./", "../")) or os.path.exists(model):
        return os.path.abspath(model)
    if model.lower().endswith(".gguf"):
        raise NotFoundError(f"model file {model!r} does not exist in {os.getcwd()}",
                            hint="give the path of a .gguf file, or OWNER/REPO:FILE.gguf")
    return model


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
    vllm_version: str | None = None         # plan for this vLLM version (default: the pod's)
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
    if host.is_local:
        req.model = local_model_path(req.model)
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
