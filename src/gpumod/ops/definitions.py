"""Service definitions (`gpumod service add`, the context setting) and dependency order.

A definition is recorded 'stopped' with its port taken in the same transaction
(:func:`gpumod.ops.services.reserve`, as `pi start` does); what runs is the
lifecycle's business (gpumod.ops.lifecycle).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gpumod import validate
from gpumod.engines.base import MAX_CONTEXT
from gpumod.engines.registry import get_engine
from gpumod.engines.vllm import DEV_MODE_ENV, check_dev_mode
from gpumod.errors import ConfigError, NotFoundError, UsageError
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import services as records
from gpumod.ops.addresses import BINDS
from gpumod.ops.services import get_service, list_services
from gpumod.spec import ENGINES, SLEEP_MODES, ServiceSpec
from gpumod.store.db import Store

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Never stored in a service definition (it would reach unit files, manifests and JSON).
SECRET_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PI_API_KEY", "VLLM_API_KEY",
                        "LLAMA_API_KEY", "OPENAI_API_KEY"})


# ---------------------------------------------------------------------------- definitions


def add_service(store: Store, spec: ServiceSpec, *, listening: set[int] | None = None
                ) -> ServiceSpec:
    """Record a new service definition (state 'stopped').

    The port (spec.port, or 0 for the first free one) and the name are checked and
    taken in one transaction (:func:`gpumod.ops.services.reserve`, as `pi start` does);
    `listening`: ports other programs hold on the host.
    """
    validate.name(spec.name, "service name")
    if spec.port:
        validate.port(spec.port)
    if spec.engine not in ENGINES:
        raise UsageError(f"unknown engine {spec.engine!r}", hint=f"use {', '.join(ENGINES)}")
    if spec.engine in ("vllm", "llamacpp"):
        from gpumod.ops.startplan import validate_model

        if spec.model.lower().endswith(".gguf") and not spec.model.startswith(("/", "~/")) \
                and ":" not in spec.model:
            raise UsageError(f"model path {spec.model!r} must be absolute on the host",
                             hint="give /path/to/model.gguf (or ~/...)")
        validate_model(spec.model)
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
    for index in spec.gpus:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(f"invalid GPU index {index!r}", hint="use indexes like 0 or 0,1")
    if len(set(spec.gpus)) != len(spec.gpus):
        raise UsageError(f"GPU index repeated in {list(spec.gpus)}", hint="name each GPU once")
    if spec.vram_mib is not None and (isinstance(spec.vram_mib, bool) or spec.vram_mib < 1):
        raise UsageError(f"invalid VRAM budget {spec.vram_mib!r} MiB",
                         hint="give a positive number of MiB per GPU")
    bind = spec.extra.get("bind")
    if bind is not None and bind not in BINDS:
        raise UsageError(f"invalid bind address {bind!r}", hint=f"use {', '.join(BINDS)}")
    for key, value in spec.env.items():
        validate.no_control_chars(f"{key}={value}", "environment")
        if not _ENV_KEY.fullmatch(key):
            raise UsageError(f"invalid environment variable name {key!r}",
                             hint="use letters, digits and '_', not starting with a digit")
        if key.upper() in SECRET_ENV:
            raise UsageError(f"{key} is a secret and is not stored with the service",
                             hint="pass secrets only through PI_API_KEY / HF_TOKEN in your "
                                  "environment; gpumod hands them over in a 0600 file")
    for arg in spec.args:
        validate.no_control_chars(arg, "argument")
    check_dev_mode(spec.env.get(DEV_MODE_ENV))
    validate.no_secret_in([spec.model, spec.args, spec.env, spec.extra], validate.env_secrets(),
                          "service's arguments or environment")
    engine = get_engine(spec.engine)
    if spec.sleep_mode != "router":
        engine.validate(spec)
    host = hosts_ops.get_host(store, spec.host)
    spec = records.reserve(store, spec, host, listening=set(listening or ()),
                           port=spec.port or None, state="stopped",
                           name_hint="pick another name, or remove it first")
    try:
        _check_cycles(list_services(store, spec.host))
    except ConfigError:
        records.drop(store, spec.name)
        raise
    return spec


def set_context(store: Store, name: str, tokens: int) -> ServiceSpec:
    """Replace the engine's context flag in the service's stored args (next start uses it)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_CONTEXT:
        raise UsageError(f"context {tokens!r} must be a number of tokens from 1 to {MAX_CONTEXT}")
    spec = get_service(store, name)
    args = tuple(get_engine(spec.engine).apply_context(spec.args, tokens))
    records.save_args(store, name, args)
    store.log_event("context", host=spec.host, service=name, detail=f"{tokens} tokens")
    return spec.with_(args=args)


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
