"""`gpumod service ...`: define services and control them (start, stop, sleep, wake, ...)."""

from __future__ import annotations

import click

from gpumod.cli.common import (
    gateway_options,
    info,
    json_option,
    plain,
    pod_option,
    print_json,
    store,
    table,
)
from gpumod.errors import EngineError


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
@click.option("--gpus", help="GPU indexes, e.g. 0 or 0,1; none: on the CPU (llama.cpp). "
              "Default: chosen by the planner on the host's GPUs as read now.")
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
@gateway_options
def add(name: str, preset: str | None, engine: str | None, model: str | None, pod: str | None,
        port: int | None, gpus: str | None, sleep_mode: str | None, depends_on: str | None,
        args_text: str | None, env_items: tuple[str, ...], vram_mib: int | None,
        supervisor: str, bind: str | None, image: str | None,
        container_port: int | None, idle_ttl: str | None, aliases: tuple[str, ...]) -> None:
    """Define a service from a preset or from an engine and a model (nothing starts).

    \b
    gpumod service add chat --preset chat
    gpumod service add emb --engine vllm --model BAAI/bge-m3 --idle-ttl 10m --alias embedder
    """
    from gpumod.ops.define import AddRequest, define_service

    added = define_service(store(), AddRequest(
        name=name, preset=preset, engine=engine, model=model, pod=pod, port=port, gpus=gpus,
        sleep_mode=sleep_mode, depends_on=depends_on, args=args_text, env=env_items,
        vram_mib=vram_mib, supervisor=supervisor, bind=bind, image=image,
        container_port=container_port, idle_ttl=idle_ttl, aliases=aliases))
    spec = added.spec
    click.echo(f"added {name}: {spec.engine} {spec.model} on {spec.host}:{spec.port}, "
               f"{added.where} (supervisor {spec.supervisor}, sleep {spec.sleep_mode})")
    for note in added.notes:
        info(f"note: {note}")


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
@click.option("-n", "--lines", type=click.IntRange(0, 10_000_000), default=100,
              show_default=True, help="How many lines from the end.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl+C stops).")
def logs_cmd(name: str, lines: int, follow: bool) -> None:
    """Print (or follow) a service's log; the same as `pi logs NAME`."""
    from gpumod.cli.deploy import print_log

    print_log(name, lines=lines, follow=follow)


@service.command("sleep")
@click.argument("name")
@click.option("--level", type=click.Choice(["1", "2"]), default=None,
              help="vLLM sleep level (default: the service's).")
@json_option
def sleep_cmd(name: str, level: str | None, as_json: bool) -> None:
    """Put a service to sleep, verified (engine state and GPU memory); falls back 2->1->stop."""
    from gpumod.ops import lifecycle

    report = lifecycle.sleep(store(), name, level, progress=_progress)
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
    from gpumod.ops import lifecycle

    report = lifecycle.wake(store(), name, progress=_progress)
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
    from gpumod.ops.define import unit_text

    text, notes = unit_text(store(), name, scope)
    for note in notes:
        info(f"note: {note}")
    click.echo(text, nl=False)
