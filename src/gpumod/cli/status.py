"""`gpumod status`: a host's GPUs, their memory and the processes using them."""

from __future__ import annotations

import click

from gpumod.cli.common import console, json_option, plain, pod_option, print_json, store, table


@click.command()
@pod_option
@json_option
@click.option("--visual", is_flag=True, help="Draw one VRAM bar per GPU.")
def status(pod: str | None, as_json: bool, visual: bool) -> None:
    """GPUs with memory total/used/free and the processes using them."""
    from gpumod.ops.status import host_status

    result = host_status(store(), pod)
    if as_json:
        print_json(result.to_json())
        return
    out = console()
    if not result.gpus:
        out.print(plain(f"{result.host}: no NVIDIA GPU (nvidia-smi not available)"))
        return
    if visual:
        from gpumod.ops.status import render_visual

        out.print(plain(render_visual(result)))
        return
    t = table("GPU", "NAME", "TOTAL MiB", "USED MiB", "FREE MiB", title=f"host {result.host}")
    for g in result.gpus:
        t.add_row(str(g["index"]), plain(g["name"]), str(g["memory_total_mib"]),
                  _num(g["memory_used_mib"]), _num(g["memory_free_mib"]))
    out.print(t)
    if result.processes:
        p = table("GPU", "PID", "PROCESS", "MiB", "SERVICE")
        for proc in result.processes:
            p.add_row(str(proc["gpu"]), str(proc["pid"]), plain(proc["name"]),
                      _num(proc["used_mib"]), plain(proc["service"] or ""))
        out.print(p)
    else:
        out.print("no GPU processes")


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)
