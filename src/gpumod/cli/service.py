"""`gpumod service ...`: define services and control them (start, stop, sleep, wake, ...)."""

from __future__ import annotations

import shlex

import click

from gpumod.cli.common import info, json_option, plain, pod_option, print_json, store, table
from gpumod.errors import EngineError, UsageError


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def _progress(message: str) -> None:
    info(message)


@click.group()
def service() -> None:
    """Define services and control them: start, stop, sleep, wake, logs, unit."""


@service.command("add")
@click.argument("name")
@click.option("--preset", help="Start from a shipped preset (see `gpumod preset list`).")
@click.option("--engine", type=click.Choice(["vllm", "llamacpp", "command", "docker"]))
@click.option("--model", help="HF id, GGUF path, or (router mode) a folder of GGUF files.")
@pod_option
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port on the host (default: the preset's or a free one).")
@click.option("--gpus", help="GPU indexes, e.g. 0 or 0,1.")
@click.option("--sleep", "sleep_mode", type=click.Choice(["none", "l1", "l2", "router"]))
@click.option("--depends-on", help="Services that must run first, comma separated.")
@click.option("--args", "args_text", help="Engine arguments, one shell-quoted string.")
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE",
              help="Non-secret environment (repeatable).")
@click.option("--vram-mib", type=click.IntRange(min=1),
              help="VRAM budget per GPU (for the fit check).")
@click.option("--supervisor", type=click.Choice(["auto", "systemd", "process", "docker"]),
              default="auto", show_default=True,
              help="auto: systemd where a manager runs, else process.")
@click.option("--bind", default=None, help="Address to listen on (127.0.0.1 or 0.0.0.0).")
@click.option("--image", help="Docker image (engine docker).")
@click.option("--container-port", type=click.IntRange(1, 65535),
              help="Port inside the container (engine docker).")
@click.option("--idle-ttl", metavar="TTL",
              help="Put it to rest after this long idle (10m, 90s, 1h, never): the "
                   "gateway and `gpumod watch` sleep it (or stop it if it cannot sleep).")
@click.option("--alias", "aliases", multiple=True, metavar="NAME",
              help="Another `model` name the gateway routes to it (repeatable).")
def add(name: str, preset: str | None, engine: str | None, model: str | None, pod: str | None,
        port: int | None, gpus: str | None, sleep_mode: str | None, depends_on: str | None,
        args_text: str | None, env_items: tuple[str, ...], vram_mib: int | None,
        supervisor: str, bind: str | None, image: str | None,
        container_port: int | None, idle_ttl: str | None, aliases: tuple[str, ...]) -> None:
    """Define a service from a preset or from an engine and a model."""
    from gpumod import validate
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import lifecycle
    from gpumod.spec import ServiceSpec

    validate.name(name, "service name")
    st = store()
    host = hosts_ops.resolve_host(st, pod)
    extra: dict = {}
    base: dict = {"args": [], "env": {}, "depends_on": [], "sleep": "none",
                  "health_path": "/health", "gpus": None, "vram_mib": None, "port": None}
    if preset:
        from gpumod.catalog.presets import service_preset

        p = service_preset(preset)
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
    elif not engine or not model:
        raise UsageError("give --preset, or both --engine and --model",
                         hint="`gpumod preset list` shows the presets")
    if engine and preset and engine != base["engine"]:
        raise UsageError(f"--engine {engine} conflicts with preset {preset} ({base['engine']})")
    engine = engine or base["engine"]
    model = model or base["model"]
    if args_text is not None:
        try:
            base["args"] = shlex.split(args_text)
        except ValueError as exc:
            raise UsageError(f"--args {args_text!r}: {exc}",
                             hint="quote it as you would in a shell, e.g. --args \"--foo 'a b'\"",
                             ) from None
    for item in env_items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r} must be KEY=VALUE")
        base["env"][key] = value
    if depends_on is not None:
        base["depends_on"] = list(_names(depends_on))
    if engine == "docker":
        docker_cfg = dict(extra.get("docker") or {})
        if image:
            docker_cfg["image"] = image
        if container_port:
            docker_cfg["port"] = container_port
        if not docker_cfg.get("image"):
            raise UsageError("engine docker needs --image (or a docker preset)")
        from gpumod.engines.docker import parse_config

        parse_config(docker_cfg)
        extra["docker"] = docker_cfg
    gpu_list = base["gpus"] or []
    if gpus is not None:
        try:
            gpu_list = [int(g) for g in _names(gpus)]
        except ValueError:
            raise UsageError(f"--gpus {gpus!r} must be GPU indexes like 0 or 0,1") from None
    known = {g.index for g in host.gpus}
    if known and any(g not in known for g in gpu_list):
        raise UsageError(f"{host.name} has GPUs {sorted(known)}, not {gpu_list}")
    if not gpu_list and host.gpus and engine in {"vllm", "llamacpp"}:
        gpu_list = [min(known)]
    if bind:
        extra["bind"] = bind
    from gpumod.ops.idle import gateway_extra

    extra.update(gateway_extra(idle_ttl, aliases))
    chosen = supervisor
    if supervisor == "auto":
        chosen = "process"
        from gpumod.supervise.systemd import detect_scope

        scope = detect_scope(hosts_ops.transport_for(host))
        if scope:
            chosen, extra["systemd_scope"] = "systemd", scope
    elif supervisor == "systemd":
        from gpumod.supervise.systemd import detect_scope

        scope = detect_scope(hosts_ops.transport_for(host))
        if scope is None:
            raise UsageError(f"{host.name} runs no systemd manager gpumod can use",
                             hint="use --supervisor process (or auto)")
        extra["systemd_scope"] = scope
    elif supervisor == "docker" and engine != "docker":
        raise UsageError("--supervisor docker is for engine docker")
    from gpumod.errors import GpumodError
    from gpumod.ops.probe import listening_ports

    try:  # ports other programs hold there are not offered (as `pi start` does)
        listening = listening_ports(hosts_ops.transport_for(host))
    except GpumodError:
        listening = set()
    spec = ServiceSpec(
        name=name, host=host.name, engine=engine, model=model, port=port or base["port"] or 0,
        gpus=tuple(gpu_list), args=tuple(base["args"]), env=dict(base["env"]),
        supervisor=chosen, sleep_mode=sleep_mode or base["sleep"],
        health_path=base["health_path"], depends_on=tuple(base["depends_on"]),
        vram_mib=vram_mib or base["vram_mib"], extra=extra)
    spec = lifecycle.add_service(st, spec, listening=listening)
    click.echo(f"added {name}: {engine} {model} on {host.name}:{spec.port} "
               f"(supervisor {chosen}, sleep {spec.sleep_mode})")


@service.command("list")
@pod_option
@click.option("--all", "all_hosts", is_flag=True, help="Services of every host.")
@json_option
def list_cmd(pod: str | None, all_hosts: bool, as_json: bool) -> None:
    """Services with their live state (checked on their hosts, one round trip per host)."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.states import list_status, raise_if_unreachable

    st = store()
    host = None if all_hosts else hosts_ops.resolve_host(st, pod).name
    statuses = list_status(st, None if host is None else [host])
    if as_json:
        print_json([s.to_json() for s in statuses])
        raise_if_unreachable(statuses)
        return
    if not statuses:
        click.echo("no services" + (f" on {host}" if host else ""))
        return
    t = table("NAME", "HOST", "ENGINE", "MODEL", "PORT", "GPUS", "SLEEP", "SUPERVISOR", "STATE")
    for status in statuses:
        s = status.spec
        t.add_row(plain(s.name), plain(s.host), s.engine, plain(s.model), str(s.port),
                  ",".join(map(str, s.gpus)) or "-", s.sleep_mode, s.supervisor, status.state)
    from gpumod.cli.common import console

    console().print(t)
    raise_if_unreachable(statuses)


@service.command("status")
@click.argument("name")
@json_option
def status_cmd(name: str, as_json: bool) -> None:
    """Live state of one service: state, process, health."""
    from gpumod.ops.states import raise_if_unreachable, service_status

    status = service_status(store(), name)
    if as_json:
        print_json(status.to_json())
        raise_if_unreachable([status])
        return
    s = status.spec
    click.echo(f"{s.name}: {s.engine} {s.model} on {s.host}:{s.port}")
    click.echo(f"  state: {status.state} ({status.detail})   recorded: {s.state}   "
               f"process: {status.process}   health: {status.health}")
    if s.sleep_mode != "none":
        click.echo(f"  sleeping: {'yes' if status.sleeping else 'no'} (sleep mode {s.sleep_mode})")
    raise_if_unreachable([status])


@service.command("start")
@click.argument("name")
@click.option("--timeout", type=float, default=600, show_default=True,
              help="Seconds to wait for each service to become healthy.")
@click.option("--force", is_flag=True,
              help="Start even where the planner says the service does not fit.")
def start_cmd(name: str, timeout: float, force: bool) -> None:
    """Start a service (its dependencies first), waiting until each is healthy."""
    from gpumod.ops import lifecycle

    started = lifecycle.start_service(store(), name, timeout=timeout, progress=_progress,
                                      force=force)
    click.echo(f"started: {', '.join(started)}" if started else f"{name} is already running")


@service.command("stop")
@click.argument("name")
def stop_cmd(name: str) -> None:
    """Stop a service (services depending on it first)."""
    from gpumod.ops import lifecycle

    stopped = lifecycle.stop_service(store(), name, progress=_progress)
    click.echo(f"stopped: {', '.join(stopped)}")


@service.command("restart")
@click.argument("name")
def restart_cmd(name: str) -> None:
    """Stop and start a service (and the services depending on it)."""
    from gpumod.ops import lifecycle

    started = lifecycle.restart_service(store(), name, progress=_progress)
    click.echo(f"restarted: {', '.join(started)}")


@service.command("remove")
@click.argument("name")
def remove_cmd(name: str) -> None:
    """Stop a service and delete its definition (and its systemd unit)."""
    from gpumod.ops import lifecycle

    lifecycle.remove_service(store(), name)
    click.echo(f"removed {name}")


@service.command("logs")
@click.argument("name")
@click.option("-n", "--lines", type=int, default=100, show_default=True)
@click.option("-f", "--follow", is_flag=True)
def logs_cmd(name: str, lines: int, follow: bool) -> None:
    """Print (or follow) a service's log."""
    import sys

    from gpumod.ops import lifecycle
    from gpumod.supervise.process import tail_argv

    st = store()
    rt = lifecycle.runtime(st, lifecycle.get_service(st, name))
    argv = tail_argv(rt.plan.log_path, max(1, lines), follow)
    try:
        with rt.transport.stream(argv) as out:
            for chunk in out.iter_bytes():
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    if out.returncode != 0:
        raise UsageError(f"no log for {name} yet", hint=f"start it: gpumod service start {name}")


@service.command("sleep")
@click.argument("name")
@click.option("--level", type=click.Choice(["1", "2"]), default=None,
              help="vLLM sleep level (default: the service's).")
@json_option
def sleep_cmd(name: str, level: str | None, as_json: bool) -> None:
    """Put a service to sleep, verified (engine state and GPU memory); falls back 2->1->stop."""
    from gpumod.ops.sleep import sleep_service

    report = sleep_service(store(), name, level, progress=_progress)
    if as_json:
        print_json(report.to_json())
    else:
        click.echo(report.summary())
    if not report.ok:
        raise EngineError(f"{name} could not be put to sleep", hint="see the attempts above")


@service.command("wake")
@click.argument("name")
@json_option
def wake_cmd(name: str, as_json: bool) -> None:
    """Wake a service, verified (health + a one-token canary); falls back to a restart."""
    from gpumod.ops.sleep import wake_service

    report = wake_service(store(), name, progress=_progress)
    if as_json:
        print_json(report.to_json())
    else:
        click.echo(report.summary())
    if not report.ok:
        raise EngineError(f"{name} could not be woken", hint="see the attempts above")


@service.command("unit")
@click.argument("name")
@click.option("--scope", type=click.Choice(["user", "system"]), default=None,
              help="Render for this systemd scope (default: the service's, else user).")
def unit_cmd(name: str, scope: str | None) -> None:
    """Print the systemd unit gpumod would install for a service."""
    from dataclasses import replace

    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import lifecycle
    from gpumod.supervise.units import UnitOptions, render_unit

    st = store()
    spec = lifecycle.get_service(st, name)
    host = hosts_ops.get_host(st, spec.host)
    plan = lifecycle.launch_plan(spec, host)
    if not plan.argv[0].startswith("/"):
        from gpumod.supervise.systemd import SystemdSupervisor

        sup = SystemdSupervisor(hosts_ops.transport_for(host))
        try:
            plan = sup.resolve_command(plan)
        except EngineError:
            plan = replace(plan, argv=(f"/usr/bin/{plan.argv[0]}", *plan.argv[1:]))
            info(f"note: {spec.engine} binary not found on {host.name}; "
                 f"showing {plan.argv[0]}")
    chosen = scope or str(spec.extra.get("systemd_scope") or "user")
    click.echo(render_unit(plan, UnitOptions(engine=spec.engine, scope=chosen)), nl=False)
