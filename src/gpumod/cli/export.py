"""`gpumod export kubernetes`: manifests for what gpumod describes (see docs/kubernetes.md)."""

from __future__ import annotations

import click

from gpumod.cli.common import info


@click.group()
def export() -> None:
    """Write what gpumod describes in other systems' formats."""


@export.command("kubernetes")
@click.argument("name", required=False)
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="A service or deployment to export (repeatable).")
@click.option("--mode", help="Export every service of this mode.")
@click.option("--preset", help="Export a service or mode preset (no store needed).")
@click.option("--model", help="Export a catalog model (or HF id) on vLLM, sized by --nodes.")
@click.option("--name", "model_name",
              help="With --model: the deployment name (default: the model's, lower-case).")
@click.option("--nodes", type=click.IntRange(min=1),
              help="With --model: pods for one model (default 1: a Deployment; 2+ gives a "
                   "LeaderWorkerSet on Ray).")
@click.option("--gpus-per-node", type=click.IntRange(min=1),
              help="With --model: GPUs per pod (tensor parallel size; default 8 with "
                   "--nodes 2+, else the catalog's largest configuration).")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False),
              help="Write one file per service (NAME.yaml) into this folder instead of "
                   "stdout; made if missing, same-named files replaced.")
@click.option("-n", "--namespace", help="Namespace of every object (default: kubectl's).")
@click.option("--image", "images", multiple=True, metavar="[SERVICE=]IMAGE",
              help="Container image (needed for command engines); repeatable.")
@click.option("--storage-class", help="StorageClass of the model cache volumes.")
@click.option("--cache-size", help="Size of each cache volume (default 100Gi, 1Ti multi-node).")
@click.option("--secret-name", default="gpumod", show_default=True,
              help="Secret holding api-key (and optional hf-token).")
@click.option("--proxy-image", default=None,
              help="nginx image of the sidecar in front of sleep-enabled vLLM.")
@click.option("--shm-size", help="/dev/shm size for vLLM (default 8Gi, 16Gi multi-node).")
def kubernetes(name: str | None, services: tuple[str, ...], mode: str | None,
               preset: str | None, model: str | None, model_name: str | None,
               nodes: int | None, gpus_per_node: int | None, folder: str | None,
               namespace: str | None, images: tuple[str, ...], storage_class: str | None,
               cache_size: str | None, secret_name: str, proxy_image: str | None,
               shm_size: str | None) -> None:
    """Deployment + Service per service, a LeaderWorkerSet for a multi-node one.

    One source: NAME or --service (stored services or `pi start` deployments), --mode,
    --preset (no store needed) or --model. Secrets are referenced, never written.
    Prints YAML, or one file per service with -o. Apply with `kubectl apply -f`.

    \b
    gpumod export kubernetes chat
    gpumod export kubernetes --mode rag -o k8s/
    gpumod export kubernetes --model moonshotai/Kimi-K2-Instruct --nodes 2
    """
    from gpumod.ops.export import ExportOptions, Source, export_kubernetes, parse_image_options

    bare, named = parse_image_options(images)
    source = Source(services=((name,) if name is not None else ()) + services, mode=mode, preset=preset,
                    model=model, name=model_name, nodes=nodes, gpus_per_node=gpus_per_node)
    options = ExportOptions(namespace=namespace, images=named, image=bare,
                            storage_class=storage_class, cache_size=cache_size,
                            secret_name=secret_name, shm_size=shm_size,
                            proxy_image=proxy_image)
    store = None
    if source.services or source.mode:
        from gpumod.cli.common import store as open_store

        store = open_store()
    result = export_kubernetes(store, source, options)
    for note in result.notes:
        info(f"note: {note}")
    if folder is None:
        click.echo(result.yaml(), nl=False)
        return
    for path in result.write(folder):
        kinds = ", ".join(o["kind"] for o in result.objects[path.stem])
        info(f"wrote {path} ({kinds})")
