"""`pi start / stop / list / logs / tunnel`: deployments on the active pod or --pod."""

from __future__ import annotations

import sys

import click

from gpumod.cli.common import (
    console,
    gateway_options,
    json_option,
    plain,
    pod_option,
    print_json,
    run_tunnel,
    store,
    table,
)

STATE_STYLE = {"running": "green", "starting": "yellow", "sleeping": "cyan",
               "stopping": "yellow", "unhealthy": "yellow", "degraded": "yellow",
               "crashed": "red", "stopped": "red",
               "unreachable": "magenta", "unknown": "magenta"}


class VerbatimTailCommand(click.Command):
    """Everything after the first `--vllm` goes to the engine untouched (as in Pi)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--vllm" in args:
            at = args.index("--vllm")
            ctx.meta["gpumod.custom_args"] = list(args[at + 1:])
            args = args[:at]
        else:
            ctx.meta["gpumod.custom_args"] = None
        return super().parse_args(ctx, args)


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command(cls=VerbatimTailCommand)
@click.argument("model", required=False)
@click.option("--name", metavar="NAME", help="Name of the deployment (required with MODEL).")
@pod_option
@click.option("--pods", metavar="POD1,POD2,...",
              help="One model across these pods on Ray: two or more, comma separated, "
                   "the first the head (vLLM's tensor parallel inside a pod, pipeline "
                   "parallel across). Not with --pod, --gpus or --idle-ttl.")
@click.option("--engine", type=click.Choice(["vllm", "llamacpp", "command"]),
              help="Inference engine (default: the catalog's, else vllm; llamacpp for .gguf).")
@click.option("--memory", metavar="SHARE",
              help="vLLM GPU memory share: 50%, 90%, 0.5 (replaces the catalog value).")
@click.option("--context", metavar="SIZE", help="Context length: 4k, 32k, 128k, 1m or tokens.")
@click.option("--gpus", type=click.IntRange(0, 64), help="Number of GPUs.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port on the host (default: the first free one from 8001).")
@click.option("--timeout", "deadline", type=click.FloatRange(1, 24 * 3600), metavar="SECONDS",
              help="How long to wait for health (default: vllm 1200, others 300).")
@click.option("--health-path", metavar="PATH", help="Health URL path (default /health).")
@click.option("--no-download", is_flag=True, help="Fail instead of downloading the model.")
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the engine log while waiting.")
@click.option("--force", is_flag=True,
              help="Start even where the planner says the model does not fit.")
@click.option("--vllm-version", metavar="X.Y",
              help="vLLM version the VRAM check plans for (default: the pod's, from setup).")
@gateway_options
@json_option
@click.pass_context
def start(ctx: click.Context, model: str | None, name: str | None, pod: str | None,
          pods: str | None, engine: str | None, memory: str | None, context: str | None,
          gpus: int | None, port: int | None, deadline: float | None, health_path: str | None,
          no_download: bool, quiet: bool, force: bool, vllm_version: str | None,
          idle_ttl: str | None, aliases: tuple[str, ...], as_json: bool) -> None:
    """Start MODEL (HF id, or a path on the host) as an OpenAI-compatible endpoint.

    \b
    pi start Qwen/Qwen2.5-Coder-32B-Instruct --name qwen
    pi start some/model --name m --vllm --tensor-parallel-size 2 --max-model-len 32768
    pi start ~/models/tiny.gguf --name tiny --engine llamacpp --pod local
    pi start srv --name emb --engine command --vllm python -m my_server --port {port}
    pi start deepseek-ai/DeepSeek-R1 --name r1 --pods dc1,dc2
    pi start BAAI/bge-m3 --name emb --idle-ttl 10m --alias embedder

    Without MODEL: the known models and which fit the target host.
    """
    from gpumod.errors import UsageError
    from gpumod.ops import deploy

    custom = ctx.meta.get("gpumod.custom_args")
    if model is None:
        if custom is not None or name:
            raise UsageError("MODEL is missing", hint="pi start MODEL --name NAME")
        from gpumod.cli.models import show_models

        show_models(pod, as_json=as_json, all_models=False)
        return
    if not name:
        raise UsageError("--name is required", hint=f"pi start {model} --name NAME")
    if health_path is not None and not health_path.startswith("/"):
        raise UsageError(f"--health-path must start with '/', got {health_path!r}")
    req = deploy.StartRequest(model=model, name=name, pod=pod, engine=engine, memory=memory,
                              context=context, gpus=gpus, port=port, custom_args=custom,
                              deadline=deadline, health_path=health_path,
                              download=not no_download, force=force,
                              vllm_version=vllm_version, idle_ttl=idle_ttl, aliases=aliases)
    log = (lambda line: None) if quiet else (lambda line: _err(f"  | {line}"))
    if pods is not None:
        from gpumod.ops import multinode_start

        names = [p.strip() for p in pods.split(",") if p.strip()]
        result = multinode_start.start(store(), req, names, out=_err, log=log)
    else:
        result = deploy.start(store(), req, out=_err, log=log)
    if as_json:
        print_json({**result.spec.to_json(), "url": result.url,
                    "served_model": result.served_model, "api_key": result.masked_key,
                    "support": result.support, "seconds": round(result.seconds, 2)})
        return
    c = console()
    c.print(plain(f"{result.spec.name} is ready ({result.seconds:.1f}s) on {result.spec.host}"))
    c.print(plain(f"  base URL:  {result.url}"))
    c.print(plain(f"  model:     {result.served_model}  [{result.support}]"))
    c.print(plain(f"  API key:   {result.masked_key}  (the value of PI_API_KEY)"))
    c.print(plain(f"  GPUs:      {','.join(map(str, result.spec.gpus)) or 'none (CPU)'}"))
    if result.notes:
        c.print(plain(f"  notes:     {result.notes}"))
    c.print(plain(""))
    c.print(plain(result.exports()))


@click.command("list")
@pod_option
@click.option("--all-pods", is_flag=True, help="Every host, not just the target one.")
@click.option("--prune", is_flag=True,
              help="Forget deployments whose process is gone (not `gpumod service` definitions).")
@json_option
def list_cmd(pod: str | None, all_pods: bool, prune: bool, as_json: bool) -> None:
    """Deployments with their real state (process and HTTP health, checked on the host).

    --prune forgets `pi start` deployments whose process is gone (crashed, or stopped
    outside gpumod); never one put to rest by its idle TTL or the gateway, nor a
    `gpumod service` definition. Exit 5 if a host cannot be reached.

    \b
    pi list --all-pods --prune
    """
    from gpumod.errors import UsageError
    from gpumod.ops import gateway
    from gpumod.ops import hosts as hostops
    from gpumod.ops.states import list_status, raise_if_unreachable

    s = store()
    if all_pods and pod:
        raise UsageError("--pod and --all-pods exclude each other",
                         hint="--pod NAME lists one host, --all-pods every host")
    names = None if all_pods else [hostops.resolve_host(s, pod).name]
    hosts = names if names is not None else [h.name for h in hostops.list_hosts(s)]
    gateway.reconcile_hosts(s, hosts)  # a pod's gateway may have slept or started services
    statuses = list_status(s, names)
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    if prune:  # only then: ops.deploy brings the catalog, the planner and the engines
        from gpumod.ops import deploy

        pruned = deploy.prune(s, statuses)
        removed, kept = pruned.removed, pruned.kept
    shown = [st for st in statuses if st.spec.name not in removed]
    if as_json:
        print_json([st.to_json() for st in shown])
    elif not shown:
        where = "any host" if all_pods else names[0] if names else "this host"
        click.echo(f"no deployments on {where}")
    else:
        t = table("NAME", "MODEL", "ENGINE", "POD", "PORT", "GPUS", "STATE", "URL")
        for st in shown:
            t.add_row(plain(st.spec.name), plain(st.spec.model), plain(st.spec.engine),
                      plain(st.spec.host), plain(st.spec.port),
                      plain(",".join(map(str, st.spec.gpus)) or "-"),
                      plain(st.state).__class__(st.state, style=STATE_STYLE.get(st.state, "")),
                      plain(st.url))
        console().print(t)
        for st in shown:
            if st.nodes:
                click.echo(f"{st.spec.name} nodes: " + ", ".join(
                    f"{n['pod']} ({n['role']}, {n['ip']}) {n['state']}" for n in st.nodes))
        for st in shown:
            if st.state != "running":
                _err(f"{st.spec.name}: {st.state}"
                     + (f": {st.detail}" if st.detail != st.state else ""))
    for name in removed:
        _err(f"pruned {name}")
    for name, why in kept:
        _err(f"kept {name}: {why}")
    if not as_json:
        for host in hosts:
            rec = gateway.record(s, host)
            if rec is not None:
                click.echo(f"gateway on {host}: {rec.url}  (`gpumod gateway status`)")
    raise_if_unreachable(shown)


@click.command()
@click.argument("name", required=False)
@pod_option
@click.option("--yes", "-y", is_flag=True, help="Stop all without asking (no NAME).")
@click.option("--timeout", type=click.FloatRange(1, 600), default=20, show_default=True,
              metavar="SECONDS", help="Grace period between TERM and KILL.")
def stop(name: str | None, pod: str | None, yes: bool, timeout: float) -> None:
    """Stop NAME (or every deployment on the target host)."""
    from gpumod.errors import EngineError, GpumodError
    from gpumod.ops import deploy

    s = store()
    if name:
        result = deploy.stop(s, name, timeout=timeout)
        click.echo(f"stopped {result.name} on {result.host}"
                   + (" (killed after the grace period)" if result.outcome == "killed" else ""))
        return
    host, specs = deploy.services_on(s, pod)
    if not specs:
        click.echo(f"nothing to stop on {host.name}")
        return
    names = ", ".join(sp.name for sp in specs)
    if not yes and not click.confirm(f"stop {len(specs)} deployment(s) on {host.name} "
                                     f"({names})?", err=True):
        raise click.exceptions.Abort()
    failed: list[str] = []
    for sp in specs:
        try:
            result = deploy.stop(s, sp.name, timeout=timeout)
            click.echo(f"stopped {result.name}")
        except GpumodError as exc:
            failed.append(sp.name)
            _err(f"error: {sp.name}: {exc.message}")
    if failed:
        raise EngineError(f"could not stop {', '.join(failed)}; their records are kept")


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl+C stops).")
@click.option("-n", "--lines", type=click.IntRange(0, 10_000_000), default=100,
              show_default=True, help="How many lines from the end.")
@click.option("--node", metavar="POD",
              help="Multi-node deployments: that pod's Ray node log (default: vLLM's, on "
                   "the head).")
def logs(name: str, follow: bool, lines: int, node: str | None) -> None:
    """Print a deployment's log; Ctrl+C stops following, never the deployment."""
    print_log(name, lines=lines, follow=follow, node=node)


def print_log(name: str, *, lines: int, follow: bool, node: str | None = None) -> None:
    """`pi logs` and `gpumod service logs`: one implementation (ops.deploy.logs), so the
    same exit codes: 3 when there is no log (yet), 5 when the pod is unreachable."""
    from gpumod.ops import deploy

    def write(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    code = deploy.logs(store(), name, lines=lines, follow=follow, write=write, node=node)
    if code not in (0, 130, 143, -2, -15):
        raise click.exceptions.Exit(code)


@click.command()
@click.argument("name")
@click.option("--local-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Local port (default: the service's port if free, else any free one).")
def tunnel(name: str, local_port: int | None) -> None:
    """Forward a local port to a deployment over SSH (for pods without public ports)."""
    from gpumod.ops import deploy

    spec, host, argv, url = deploy.tunnel_plan(store(), name, local_port)
    _err(f"forwarding {url} -> {spec.name} on {host.name} (port {spec.port}); Ctrl+C closes")
    click.echo(f"export OPENAI_BASE_URL={url} OPENAI_MODEL="
               f"{spec.extra.get('served_model') or spec.model}")
    run_tunnel(argv, host=host.name,
               hint=f"is port {url.rsplit(':', 1)[1].split('/')[0]} free locally?")
