"""`gpumod simulate`: check that a set of services fits before deploying it."""

from __future__ import annotations

import click

from gpumod.cli.common import console, json_option, plain, pod_option, print_json, table


@click.command()
@click.option("--services", "services", multiple=True, metavar="A,B,C",
              help="Services to place (comma-separated).")
@click.option("--mode", metavar="NAME", help="Simulate a mode's services.")
@click.option("--add", multiple=True, metavar="SERVICE", help="Add a service to the set.")
@click.option("--remove", multiple=True, metavar="SERVICE", help="Remove a service from the set.")
@click.option("--context", "context", multiple=True, metavar="SVC=TOKENS",
              help="Override a service's context, e.g. chat=16k.")
@click.option("--margin-mib", type=int, help="Safety margin per GPU (default 512).")
@click.option("--visual", is_flag=True, help="Draw the ASCII VRAM picture.")
@click.option("--no-live", is_flag=True,
              help="Use the stored GPU inventory, not the host's nvidia-smi right now.")
@click.option("--vllm-version", metavar="X.Y",
              help="Plan for this vLLM version (default: the host's, from setup).")
@pod_option
@json_option
def simulate(services: tuple[str, ...], mode: str | None, add: tuple[str, ...],
             remove: tuple[str, ...], context: tuple[str, ...], margin_mib: int | None,
             visual: bool, no_live: bool, vllm_version: str | None, pod: str | None,
             as_json: bool) -> None:
    """Would these services fit on the pod's GPUs? Per GPU, by how much, and alternatives.

    Memory that programs outside the simulated set hold now (per the host's
    nvidia-smi) counts as used; the set's own running services are not counted
    twice. Unreachable host or no nvidia-smi: the stored inventory, and a note.
    """
    from gpumod.cli.common import store
    from gpumod.ops import inputs
    from gpumod.ops.inventory import target_host
    from gpumod.ops.simulate import picture
    from gpumod.ops.simulate import simulate as run

    st = store()
    # A mode names its host; --pod (or, without a mode, the active host) otherwise.
    host = target_host(st, pod, mode=mode, stored_if_known=no_live).name
    result = run(st, host=host, services=inputs.names(*services) or None, mode=mode,
                 add=inputs.names(*add), remove=inputs.names(*remove),
                 contexts=inputs.contexts(context),
                 margin_mib=margin_mib, live=not no_live, version=vllm_version)
    if as_json:
        print_json(result.to_json())
    else:
        c = console()
        p = result.placement
        title = f"mode {mode}" if mode else ", ".join(result.services)
        c.print(plain(f"simulating {title} on {result.host}"))
        if result.usage == "live":
            c.print(plain(f"usage: live nvidia-smi on {result.host} (memory held outside "
                          "this set counts as used)"))
        else:
            c.print(plain("usage: stored GPU inventory"
                          + (f" ({result.usage_note})" if result.usage_note else
                             " (--no-live)" if no_live else "")))
        if visual:
            click.echo(picture(result))
        t = table("GPU", "name", "usable GiB", "in use GiB", "planned GiB", "free after GiB",
                  "fits")
        for g in p.gpus:
            t.add_row(str(g.index), plain(g.name), f"{g.capacity_mib / 1024:.1f}",
                      f"{g.used_mib / 1024:.1f}", f"{g.planned_mib / 1024:.1f}",
                      f"{g.free_after_mib / 1024:.1f}",
                      "yes" if g.fits else
                      f"NO (over by {(g.margin_mib - g.free_after_mib) / 1024:.1f})")
        c.print(t)
        at = table("service", "engine", "GPUs", "GiB/GPU", "settings")
        for a in p.assignments:
            at.add_row(plain(a.service), plain(a.engine), ",".join(map(str, a.gpus)),
                       f"{a.per_gpu_mib / 1024:.1f}", plain(" ".join(a.engine_args)))
        c.print(at)
        for w in result.warnings:
            c.print(plain(f"warning: {w}"))
        if p.fits:
            c.print(plain("fits"))
        else:
            c.print(plain(f"DOES NOT FIT: {p.reason or 'over capacity'}"))
            if p.alternatives:
                c.print(plain("alternatives:"))
                for alt in p.alternatives:
                    c.print(plain(f"  [{alt.rank}] {alt.description}"))
    if not result.placement.fits:
        from gpumod.errors import CapacityError

        p = result.placement
        raise CapacityError(f"does not fit: {p.reason or 'over capacity'}",
                            hint=(f"{len(p.alternatives)} alternative(s) listed above"
                                  if p.alternatives else "remove a service or use a bigger GPU"))
