"""Service lifecycle: define, start (dependencies first, each healthy), stop (dependents
first), restart, remove, set the context; and the host lock that mode switches and
service commands share.

A service's runtime pieces (host, transport, engine, launch plan, supervisor,
endpoint, sleep capability) are :class:`gpumod.ops.launch.Runtime`; every start
goes through :func:`gpumod.ops.launch.launch` (planner admission, launch, health
wait, record, calibration), the same path `pi start` uses. Records live in
:mod:`gpumod.ops.services`; live states in :mod:`gpumod.ops.states`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from gpumod import paths, validate
from gpumod.engines.base import MAX_CONTEXT, get_engine
from gpumod.engines.sleep import canary, wait_healthy
from gpumod.engines.vllm import DEV_MODE_ENV, check_dev_mode
from gpumod.errors import ConfigError, ConflictError, EngineError, NotFoundError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import services as records
from gpumod.ops.launch import BINDS, Runtime, _quiet, launch, launch_plan, runtime
from gpumod.ops.services import get_service, list_services, save_state
from gpumod.spec import ENGINES, SLEEP_MODES, ServiceSpec
from gpumod.store.db import Store

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Never stored in a service definition (it would reach unit files, manifests and JSON).
SECRET_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PI_API_KEY", "VLLM_API_KEY",
                        "LLAMA_API_KEY", "OPENAI_API_KEY"})

__all__ = ["Runtime", "get_service", "launch_plan", "list_services", "runtime", "save_state"]

Progress = Callable[[str], None]
ACTIVE_STATES = {"running", "sleeping", "starting"}
DEFAULT_HEALTH_TIMEOUT = 600.0


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
        from gpumod.ops.deploy import validate_model

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
    if bind and bind not in BINDS:
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


# ---------------------------------------------------------------------------- operations


def start_one(store: Store, rt: Runtime, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
              progress: Progress = _quiet, force: bool = False) -> ServiceSpec:
    """Launch one defined service and wait until it is healthy (see ops.launch.launch)."""
    spec = rt.spec
    if rt.alive():
        progress(f"{spec.name}: already running")
        pid = rt.pid()
        save_state(store, spec.name, "running", pid)
        return spec.with_(state="running", pid=pid)
    return launch(store, rt, timeout=timeout, force=force, progress=progress)


def stop_one(store: Store, rt: Runtime, *, progress: Progress = _quiet) -> None:
    progress(f"{rt.spec.name}: stopping")
    rt.supervisor.stop(rt.plan)
    save_state(store, rt.spec.name, "stopped", None)
    store.log_event("stopped", host=rt.spec.host, service=rt.spec.name)


def start_service(store: Store, name: str, *, timeout: float = DEFAULT_HEALTH_TIMEOUT,
                  progress: Progress = _quiet, lock_wait: float = 5.0,
                  transport: Transport | None = None, force: bool = False) -> list[str]:
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
                start_one(store, rt, timeout=timeout, progress=progress, force=force)
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
        rt.stop(forget=True)
        records.drop(store, name)
        store.log_event("removed", host=spec.host, service=name)


def check_ready(rt: Runtime, *, canary_check: bool = True) -> None:
    """Health 200 and (for OpenAI-style engines) a one-token canary answer."""
    wait_healthy(rt.endpoint, rt.health_path, timeout=60, alive=rt.alive, what=rt.spec.name)
    if canary_check and rt.spec.engine in {"vllm", "llamacpp"}:
        model = rt.sleep.canary_model(rt.endpoint) if rt.sleep else None
        canary(rt.endpoint, model=model, what=rt.spec.name)
