"""`gpumod models`: the known models and which of their configurations fit the target host."""

from __future__ import annotations

import click

from gpumod.cli.common import console, json_option, plain, pod_option, print_json, store, table


def show_models(pod: str | None, *, as_json: bool, all_models: bool) -> None:
    from gpumod.ops.models import known_models

    host, rows = known_models(store(), pod)
    if as_json:
        print_json({"host": host.name, "gpus": host.gpu_summary(), "models": rows})
        return
    shown = rows if all_models else [r for r in rows if r["fits"]]
    c = console()
    c.print(plain(f"Known models for {host.name} ({host.gpu_summary()}):"))
    if not shown:
        c.print(plain("  none of the known models fits this host; `gpumod models --all` lists "
                      "them all. Unknown models run with defaults (\"possibly works\")."))
        return
    t = table("MODEL", "ENGINE", "FITS", "CONFIG", "NOTES")
    for r in shown:
        fits = "yes" if r["fits"] and r["type_matched"] else \
            "yes (other GPU type)" if r["fits"] else "no"
        config = r["config"] or "needs " + ", ".join(r["configs"])
        t.add_row(plain(r["id"]), plain(r["engine"]), plain(fits), plain(config),
                  plain(r["notes"][:70]))
    c.print(t)
    if not all_models and len(shown) < len(rows):
        c.print(plain(f"({len(rows) - len(shown)} more need other hardware: "
                      "`gpumod models --all`)"))
    c.print(plain("Any other model: pi start OWNER/NAME --name N (\"possibly works\"); "
                  "own engine args after --vllm."))


@click.command()
@pod_option
@click.option("--all", "all_models", is_flag=True, help="Also the models that do not fit.")
@json_option
def models(pod: str | None, all_models: bool, as_json: bool) -> None:
    """Known models and which fit the target host (GPU type and count).

    `pi start` without MODEL prints the same. On a pod its GPUs are read over SSH.

    \b
    pi models --pod dc1 --all
    """
    show_models(pod, as_json=as_json, all_models=all_models)
