"""`gpumod init`: first-time set-up on this machine."""

from __future__ import annotations

import click

from gpumod.cli.common import store


@click.command()
def init() -> None:
    """Create the store, detect this machine's GPUs, and say what to do next.

    Safe to run again: it only refreshes what it detects.
    """
    from gpumod.ops.pods import init_local

    result = init_local(store())
    click.echo(f"store: {result.database}")
    if result.gpus_found:
        for gpu in result.host.gpus:
            click.echo(f"GPU {gpu.index}: {gpu.name}, {gpu.memory_mib} MiB ({gpu.uuid})")
    else:
        click.echo("no NVIDIA GPU found on this machine (nvidia-smi is not available); "
                   "llama.cpp on the CPU and remote pods still work")
    caps = result.host.capabilities
    click.echo("systemd: " + ("yes" if caps.get("systemd") else "no")
               + ", docker: " + ("yes" if caps.get("docker") else "no"))
    click.echo("next:\n"
               "  pi pods setup NAME \"ssh root@HOST\"     register a rented GPU pod\n"
               "  pi start MODEL --name NAME             run a model (pi models lists known ones)\n"
               "  gpumod status                          GPUs and what uses them")
