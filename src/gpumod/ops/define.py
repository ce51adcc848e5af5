"""What `gpumod service add` decides: an AddRequest becomes a recorded definition.

The request as typed (a preset, or an engine and a model, and the options that
replace the preset's values) is merged, checked and completed against the host
as it is now: its GPUs read by nvidia-smi (the planner picks them when none are
given), the systemd manager gpumod can use there (supervisor auto), and the
ports other programs hold. The record itself is written by
:func:`gpumod.ops.definitions.add_service` (port and name in one transaction).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.errors import GpumodError, UsageError
from gpumod.hosts.model import Host
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import inventory
from gpumod.ops.idle import gateway_extra
from gpumod.ops.inputs import names
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

SUPERVISORS = ("auto", "systemd", "process", "docker")


@dataclass
class AddRequest:
    name: str
    preset: str | None = None
    engine: str | None = None
    model: str | None = None
    pod: str | None = None
    port: int | None = None
    gpus: str | None = None             # "0", "0,1", "none" (CPU); None: the planner picks
    sleep_mode: str | None = None
    depends_on: str | None = None       # comma separated
    args: str | None = None             # one shell-quoted string
    env: tuple[str, ...] = ()           # KEY=VALUE items
    vram_mib: int | None = None
    supervisor: str = "auto"
    bind: str | None = None
    image: str | None = None            # engine docker
    container_port: int | None = None   # engine docker
    idle_ttl: str | None = None         # "10m", "90s", "never" (ops.idle.parse_ttl)
    aliases: tuple[str, ...] = ()       # other `model` names the gateway routes to it


@dataclass
class Added:
    spec: ServiceSpec
    where: str                          # "GPU 0,1", "CPU", "no GPU"
    notes: list[str] = field(default_factory=list)


def _base(req: AddRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields, extra) from the preset, before the request's own options."""
    base: dict[str, Any] = {"engine": None, "model": None, "args": [], "env": {},
                            "depends_on": [], "sleep": "none", "health_path": "/health",
                            "gpus": None, "vram_mib": None, "port": None}
    extra: dict[str, Any] = {}
    if req.preset:
        from gpumod.catalog.presets import service_preset

        p = service_preset(req.preset)
        base.update(engine=p.engine, model=p.model, args=list(p.args), env=dict(p.env),
                    depends_on=list(p.depends_on), sleep=p.sleep, health_path=p.health_path,
                    gpus=p.gpus, vram_mib=p.vram_mib, port=p.port)
        extra["preset"] = p.name
        if p.docker:
            extra["docker"] = dict(p.docker)
        if p.router:
            extra["router"] = p.router.model_dump()
        if p.idle_ttl:
            extra["idle_ttl"] = p.idle_ttl
    elif not req.engine or not req.model:
        raise UsageError("give --preset, or both --engine and --model",
                         hint="`gpumod preset list` shows the presets")
    if req.engine and req.preset and req.engine != base["engine"]:
        raise UsageError(f"--engine {req.engine} conflicts with preset {req.preset} "
                         f"({base['engine']})")
    return base, extra


def _apply_options(req: AddRequest, base: dict[str, Any], extra: dict[str, Any],
                   engine: str) -> None:
    if req.args is not None:
        try:
            base["args"] = shlex.split(req.args)
        except ValueError as exc:
            raise UsageError(f"--args {req.args!r}: {exc}",
                             hint="quote it as you would in a shell, e.g. --args \"--foo 'a b'\"",
                             ) from None
    for item in req.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r} must be KEY=VALUE")
        base["env"][key] = value
    if req.depends_on is not None:
        base["depends_on"] = list(names(req.depends_on))
    if engine == "docker":
        docker_cfg = dict(extra.get("docker") or {})
        if req.image:
            docker_cfg["image"] = req.image
        if req.container_port:
            docker_cfg["port"] = req.container_port
        if not docker_cfg.get("image"):
            raise UsageError("engine docker needs --image (or a docker preset)")
        from gpumod.engines.docker import parse_config

        parse_config(docker_cfg)
        extra["docker"] = docker_cfg
    if req.bind is not None:  # `--bind ""` is refused below, not taken for the default
        extra["bind"] = req.bind
    extra.update(gateway_extra(req.idle_ttl, req.aliases))  # over the preset's idle_ttl


def _gpu_list(req: AddRequest, base: dict[str, Any], extra: dict[str, Any], engine: str,
              host: Host) -> list[int]:
    gpu_list: list[int] = list(base["gpus"] or [])
    if req.gpus is not None and not req.gpus.strip():  # `--gpus "$GPUS"` with GPUS unset
        raise UsageError("--gpus is empty",
                         hint="give GPU indexes like 0 or 0,1, or none for the CPU; leave "
                              "--gpus out to let the planner choose")
    if req.gpus is not None and req.gpus.strip().lower() == "none":
        if engine in inventory.GPU_ONLY_ENGINES:
            raise UsageError(f"--gpus none: {engine} cannot run without a GPU")
        gpu_list, extra["cpu"] = [], True
    elif req.gpus is not None:
        try:
            gpu_list = [int(g) for g in names(req.gpus)]
        except ValueError:
            raise UsageError(f"--gpus {req.gpus!r} must be GPU indexes like 0 or 0,1, or none"
                             ) from None
    known = {g.index for g in host.gpus}
    if known and any(g not in known for g in gpu_list):
        raise UsageError(f"{host.name} has GPUs {sorted(known)}, not {gpu_list}")
    return gpu_list


def _supervisor(req: AddRequest, engine: str, host: Host, extra: dict[str, Any]) -> str:
    """The supervisor to record; systemd's scope goes into extra."""
    if req.supervisor not in SUPERVISORS:
        raise UsageError(f"unknown supervisor {req.supervisor!r}",
                         hint=f"use {', '.join(SUPERVISORS)}")
    if req.supervisor == "docker" and engine != "docker":
        raise UsageError("--supervisor docker is for engine docker")
    if req.supervisor not in ("auto", "systemd"):
        return req.supervisor
    from gpumod.supervise.systemd import detect_scope

    scope = detect_scope(hosts_ops.transport_for(host))
    if scope is None:
        if req.supervisor == "systemd":
            raise UsageError(f"{host.name} runs no systemd manager gpumod can use",
                             hint="use --supervisor process (or auto)")
        return "process"
    extra["systemd_scope"] = scope
    return "systemd"


def define_service(store: Store, req: AddRequest) -> Added:
    """Merge, check and record the definition REQ asks for (state 'stopped')."""
    from gpumod.ops.definitions import add_service
    from gpumod.ops.gateway_routes import claim_aliases
    from gpumod.ops.probe import listening_ports

    validate.name(req.name, "service name")
    reading = inventory.read(store, hosts_ops.resolve_host(store, req.pod))  # GPUs as now
    host = reading.host
    base, extra = _base(req)
    engine: str = req.engine or base["engine"]
    model: str = req.model or base["model"]
    _apply_options(req, base, extra, engine)
    gpu_list = _gpu_list(req, base, extra, engine, host)
    chosen = _supervisor(req, engine, host, extra)
    claim_aliases(store, host.name, req.name, model, extra)
    try:  # ports other programs hold there are not offered (as `pi start` does)
        listening = listening_ports(hosts_ops.transport_for(host))
    except GpumodError:
        listening = set()
    spec = ServiceSpec(
        name=req.name, host=host.name, engine=engine, model=model,
        port=req.port or base["port"] or 0, gpus=tuple(gpu_list), args=tuple(base["args"]),
        env=dict(base["env"]), supervisor=chosen, sleep_mode=req.sleep_mode or base["sleep"],
        health_path=base["health_path"], depends_on=tuple(base["depends_on"]),
        vram_mib=req.vram_mib or base["vram_mib"], extra=extra)
    if not spec.gpus and host.gpus and not extra.get("cpu"):
        spec = spec.with_(gpus=inventory.choose_gpus(store, spec, host, reading.usage))
    spec = add_service(store, spec, listening=listening)
    gpu_only = engine in inventory.GPU_ONLY_ENGINES
    where = (f"GPU {','.join(map(str, spec.gpus))}" if spec.gpus else
             "no GPU" if gpu_only or engine not in inventory.GPU_ENGINES else "CPU")
    notes = []
    if not spec.gpus and gpu_only:
        notes.append(f"{host.name} has no GPU (nvidia-smi lists none); {engine} will not "
                     "start there")
    return Added(spec, where, notes)


def unit_text(store: Store, name: str, scope: str | None = None) -> tuple[str, list[str]]:
    """The systemd unit gpumod would install for NAME, and notes (e.g. a guessed binary).

    scope: render for this systemd scope (default: the service's, else user).
    """
    from dataclasses import replace

    from gpumod.errors import EngineError
    from gpumod.ops.runtime import launch_plan
    from gpumod.ops.services import get_service
    from gpumod.supervise.units import UnitOptions, render_unit

    spec = get_service(store, name)
    host = hosts_ops.get_host(store, spec.host)
    plan = launch_plan(spec, host)
    notes: list[str] = []
    if not plan.argv[0].startswith("/"):
        from gpumod.supervise.systemd import SystemdSupervisor

        sup = SystemdSupervisor(hosts_ops.transport_for(host))
        try:
            plan = sup.resolve_command(plan)
        except EngineError:
            plan = replace(plan, argv=(f"/usr/bin/{plan.argv[0]}", *plan.argv[1:]))
            notes.append(f"{spec.engine} binary not found on {host.name}; showing "
                         f"{plan.argv[0]}")
    chosen = scope or str(spec.extra.get("systemd_scope") or "user")
    return render_unit(plan, UnitOptions(engine=spec.engine, scope=chosen)), notes
