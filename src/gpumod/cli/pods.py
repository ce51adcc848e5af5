"""`pi pods ...`, `pi shell`, `pi ssh`: register, inspect and reach GPU pods."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # loaded lazily (gpumod --help stays fast)
    from gpumod.hosts.model import Host
    from gpumod.hosts.transports.base import Transport

from gpumod.cli.common import console, json_option, plain, print_json, store, table


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def pods(ctx: click.Context, as_json: bool) -> None:
    """Register, list and switch GPU pods.

    \b
    pi pods                      list pods (* = active)
    pi pods setup dc1 "ssh root@1.2.3.4" --mount "mount -t nfs ..."
    pi pods active dc1           make dc1 the target of later commands
    pi pods active local         target this machine again
    pi pods remove dc1           forget dc1 (the machine itself is not touched)
    """
    if ctx.invoked_subcommand is None:
        _list(as_json)


def _list(as_json: bool) -> None:
    from gpumod.ops import hosts as hostops

    s = store()
    active = hostops.active_host_name(s)
    hosts = hostops.list_hosts(s)
    if as_json:
        print_json([{**h.to_json(), "active": h.name == active} for h in hosts])
        return
    t = table("", "NAME", "SSH", "GPUS", "VLLM")
    for h in hosts:
        t.add_row("*" if h.name == active else "", plain(h.name),
                  plain(h.ssh_command or "(this machine)"), plain(h.gpu_summary()),
                  plain(h.engine_env.get("vllm_version", "") if h.engine_env else ""))
    console().print(t)


@pods.command("setup")
@click.argument("name")
@click.argument("ssh_command", metavar='"SSH COMMAND"')
@click.option("--mount", metavar='"COMMAND"',
              help="Mount command for persistent model storage, run on the pod (e.g. NFS).")
@click.option("--models-path", metavar="PATH", help="Where the Hugging Face cache lives on the pod.")
@click.option("--vllm", "vllm", metavar="release|nightly|VERSION",
              help="Which vLLM to install (default: release).")
@click.option("--ray", is_flag=True,
              help="Also install Ray (the version vLLM pins), for one model across pods "
                   "(pi start --pods); with --no-install, check for it.")
@click.option("--no-install", is_flag=True,
              help="Only register and inspect an already prepared machine; install nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the registered pod as JSON.")
def setup(name: str, ssh_command: str, mount: str | None, models_path: str | None,
          vllm: str | None, ray: bool, no_install: bool, as_json: bool) -> None:
    """Register a pod by its SSH command and bootstrap it.

    Needs HF_TOKEN and PI_API_KEY in the environment (not with --no-install);
    they travel over SSH stdin into a 0600 file, never on a command line.
    Re-running setup on a registered pod is safe and keeps its deployments.

    \b
    pi pods setup dc1 "ssh root@1.2.3.4"
    pi pods setup rp1 "ssh -p 22022 -i ~/.ssh/runpod root@213.1.2.3" --models-path /workspace
    pi pods setup box "ssh gpu-box" --no-install
    pi pods setup dc2 "ssh root@10.0.0.6" --ray
    """
    from gpumod.ops.pods import SetupEvent, setup_pod

    def show(event: SetupEvent) -> None:
        if event.kind == "step":
            click.echo(f"==> {event.text}", err=True)
        elif event.kind == "ok":
            click.echo(f"    ok{': ' + event.text if event.text else ''}", err=True)
        elif event.kind == "skip":
            click.echo(f"    already done{': ' + event.text if event.text else ''}", err=True)
        elif event.kind == "fail":
            click.echo(f"    FAILED: {event.text}", err=True)
        else:
            click.echo(f"    {event.text}", err=True)

    result = setup_pod(store(), name, ssh_command, mount=mount, models_path=models_path,
                       vllm=vllm, no_install=no_install, ray=ray, on_event=show)
    if as_json:
        print_json(result.host.to_json())
        return
    verb = "registered" if result.created else "updated"
    click.echo(f"pod {name} {verb}: {result.host.gpu_summary()}")
    if result.became_active:
        click.echo(f"pod {name} is now active (`pi pods active local` switches back)")
    click.echo(f"next: pi start MODEL --name NAME --pod {name}   (pi models lists known models)")


@pods.command("active")
@click.argument("name")
def active(name: str) -> None:
    """Make NAME the target of later commands ('local' for this machine)."""
    from gpumod.ops import hosts as hostops

    host = hostops.set_active(store(), name)
    click.echo(f"active: {host.name}")


@pods.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Forget a pod and its local records. The machine and what runs on it are not touched."""
    from gpumod.ops import hosts as hostops

    host, count = hostops.remove_host(store(), name)
    click.echo(f"removed local records of pod {host.name} ({count} deployment record(s)); "
               "the machine itself was not touched")


@pods.command("expose")
@click.argument("name")
@click.option("--address", help="Public address of the pod, if not its SSH host.")
@click.option("--port", "ports", multiple=True, metavar="POD_PORT=PUBLIC_HOST:PUBLIC_PORT",
              help="A port mapping as shown by the provider (repeatable).")
def expose(name: str, address: str | None, ports: tuple[str, ...]) -> None:
    """Record how the pod's ports are reached from outside (RunPod/Vast.ai mappings)."""
    from gpumod.errors import UsageError
    from gpumod.ops import hosts as hostops

    mapping: dict[str, str] = {}
    for item in ports:
        left, sep, right = item.partition("=")
        if not sep or not left.isdigit() or ":" not in right:
            raise UsageError(f"invalid --port {item!r}",
                             hint="use POD_PORT=HOST:PORT, e.g. 8001=213.1.2.3:40123")
        rhost, _, rport = right.rpartition(":")
        if not rport.isdigit() or not rhost:
            raise UsageError(f"invalid --port {item!r}", hint="use POD_PORT=HOST:PORT")
        mapping[left] = right
    host = hostops.set_port_map(store(), name, mapping, address)
    click.echo(f"pod {host.name}: address {host.address}, {len(host.port_map)} port mapping(s)")


def _transport_for(name: str | None) -> tuple[Host, Transport]:
    from gpumod.ops import hosts as hostops

    host = hostops.resolve_host(store(), name)
    return host, hostops.transport_for(host)


@click.command()
@click.argument("name", required=False)
def shell(name: str | None) -> None:
    """Open an interactive shell on a pod (the active one without NAME)."""
    _, transport = _transport_for(name)
    argv = transport.interactive_argv()
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, required=True)
def ssh_cmd(words: tuple[str, ...]) -> None:
    """Run a command on a pod and exit with its exit code.

    \b
    pi ssh "nvidia-smi"          on the active pod
    pi ssh dc1 "df -h /"         on pod dc1
    """
    from gpumod.errors import UsageError
    from gpumod.ops.pods import run_user_command

    if len(words) == 1:
        name, command = None, words[0]
    elif len(words) == 2:
        name, command = words
    else:
        raise UsageError("give at most a pod name and one quoted command",
                         hint='e.g. pi ssh dc1 "nvidia-smi -L"')
    _, transport = _transport_for(name)
    sys.exit(run_user_command(transport, command))
