"""`gpumod gateway start|stop|status|run`: one keyed OpenAI endpoint per host."""

from __future__ import annotations

import click

from gpumod.cli.common import (
    F,
    console,
    info,
    json_option,
    plain,
    pod_option,
    print_json,
    run_tunnel,
    store,
    table,
)


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    from gpumod.ops.idle import parse_ttl

    ttl = parse_ttl(value)
    return None if ttl < 0 else ttl


def _options(func: F) -> F:
    func = click.option("--queue-wait", type=click.FloatRange(1, 3600), metavar="SECONDS",
                        help="How long a request may wait for another model's requests "
                             "(default 120).")(func)
    func = click.option("--idle-ttl", metavar="TTL",
                        help="Host default idle TTL (10m, 90s, 1h, never) for services "
                             "without their own; default: never.")(func)
    func = click.option("--bind", metavar="ADDR",
                        help="Listen address (default 127.0.0.1 here, 0.0.0.0 on a pod, "
                             "as services).")(func)
    return click.option("--port", type=click.IntRange(1, 65535), default=None,
                        help="Port (default 8000).")(func)


@click.group()
def gateway() -> None:
    """One keyed OpenAI endpoint per host: routes by `model`, wakes models on request,
    puts idle ones to sleep (docs/gateway.md).

    \b
    export PI_API_KEY=...            # the key clients send
    gpumod gateway start --idle-ttl 10m
    gpumod gateway status
    """


@gateway.command("start")
@pod_option
@_options
@click.option("--supervisor", type=click.Choice(["auto", "process", "systemd"]),
              default="auto", show_default=True,
              help="auto: systemd where a manager runs, else process.")
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the gateway's log.")
@json_option
def start_cmd(pod: str | None, port: int | None, bind: str | None, idle_ttl: str | None,
              queue_wait: float | None, supervisor: str, quiet: bool, as_json: bool) -> None:
    """Run the gateway on the host (it outlives this command). Needs PI_API_KEY.

    Defaults: port 8000; bind 127.0.0.1 on this machine, 0.0.0.0 on a pod; no idle
    TTL for services without their own; requests wait up to 120 s for busy models.
    Starting it again restarts it.

    \b
    gpumod gateway start --pod dc1 --idle-ttl 10m
    """
    from gpumod.ops import gateway as ops

    log = (lambda line: None) if quiet else (lambda line: info(f"  | {line}"))
    result = ops.start(store(), pod, port=port, bind=bind, idle_ttl=_ttl(idle_ttl),
                       queue_wait=queue_wait, supervisor=supervisor, progress=info, log=log)
    if as_json:
        print_json(result.to_json())
        return
    click.echo(f"gateway on {result.host} is up: {result.url}")
    click.echo(f"  models: {', '.join(m['served_model'] for m in result.models) or 'none yet'}")
    click.echo(f"  export OPENAI_BASE_URL={result.url}  (key: the value of PI_API_KEY)")


@gateway.command("stop")
@pod_option
def stop_cmd(pod: str | None) -> None:
    """Stop the host's gateway (its models keep their state). Exit 3 if none runs.

    \b
    gpumod gateway stop --pod dc1
    """
    from gpumod.ops import gateway as ops

    rec = ops.stop(store(), pod)
    click.echo(f"stopped the gateway on {rec.host} ({rec.url})")


@gateway.command("status")
@pod_option
@json_option
def status_cmd(pod: str | None, as_json: bool) -> None:
    """The gateway's URL and state, and each model's state, idle time and TTL.

    Exit 0 also when no gateway was started (it says so); exit 5 when the host cannot be
    reached. --json adds each model's aliases.

    \b
    gpumod gateway status --pod dc1 --json
    """
    from gpumod.errors import TransportError
    from gpumod.ops import gateway as ops
    from gpumod.ops.idle import format_ttl

    result = ops.status(store(), pod)
    if as_json:
        print_json(result.to_json())
    else:
        click.echo(f"gateway on {result.host}: {result.state}"
                   + (f"  {result.url}" if result.url else "")
                   + (f"  ({result.detail})" if result.detail else ""))
        if result.models:
            t = table("MODEL", "SERVICE", "STATE", "IN FLIGHT", "QUEUED", "IDLE", "TTL")
            for m in result.models:
                idle = "-" if m.get("idle_s") is None else format_ttl(round(m["idle_s"]))
                t.add_row(plain(m.get("served_model")), plain(m.get("name")),
                          plain(m.get("state")), str(m.get("in_flight", 0)),
                          str(m.get("queued", 0)), idle, format_ttl(m.get("ttl_s")))
            console().print(t)
    if result.state == "unreachable":
        raise TransportError(f"could not reach {result.host}: {result.detail}")


@gateway.command("run")
@_options
def run_cmd(port: int | None, bind: str | None, idle_ttl: str | None,
            queue_wait: float | None) -> None:
    """Run this machine's gateway in the foreground (Ctrl+C stops). Needs PI_API_KEY.

    For a terminal or your own supervisor; `gateway start` keeps one running instead.
    Same defaults as `gateway start` (port 8000, bind 127.0.0.1).

    \b
    gpumod gateway run --port 8080 --idle-ttl 5m
    """
    from gpumod.ops import gateway as ops

    config, key = ops.foreground(port=port, bind=bind, idle_ttl=_ttl(idle_ttl),
                                 queue_wait=queue_wait)
    from gpumod.gateway.server import serve  # the gateway is a front end, as `gpumod mcp`

    info(f"gateway on http://{config.bind}:{config.port}/v1 (Ctrl+C stops)")
    serve(config, key)


@gateway.command("tunnel")
@pod_option
@click.option("--local-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Local port (default: the gateway's port if free, else any free one).")
def tunnel_cmd(pod: str | None, local_port: int | None) -> None:
    """Forward a local port to a pod's gateway over SSH (pods without public ports).

    Runs in the foreground and prints the OPENAI_BASE_URL to use; Ctrl+C closes it
    (exit 0). Exit 3 if no gateway was started on the pod.

    \b
    gpumod gateway tunnel --pod dc1 --local-port 9000
    """
    from gpumod.ops import gateway as ops

    rec, argv, url = ops.tunnel_plan(store(), pod, local_port)
    info(f"forwarding {url} -> the gateway on {rec.host} (port {rec.port}); Ctrl+C closes")
    click.echo(f"export OPENAI_BASE_URL={url}")
    run_tunnel(argv, host=rec.host, hint="is the local port free?")
