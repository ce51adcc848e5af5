"""`gpumod export kubernetes`: what gpumod describes, as manifests for a cluster.

Sources (one per export): services or `pi start` deployments from the store (by
name, or a mode's services), a shipped or user preset (service or mode), or a
catalog model with explicit sizes (``--model M --nodes N``).

Each service becomes a :class:`gpumod.export.kubernetes.Workload`
(``gpumod.ops.k8s_workload``): the engine argv is built by the same drivers and the
same ``launch_plan`` as a normal launch, for a host that is a container. Services
that cannot be expressed in a cluster are refused with a hint: a command engine
without an image, Docker bind mounts of host folders, host networks.

Secrets are never read here: the manifests reference the keys of a Secret.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumod.engines.base import has_flag, replace_flag
from gpumod.errors import ConflictError, UsageError
from gpumod.export import kubernetes as k8s
from gpumod.hosts.model import Host
from gpumod.ops.k8s_workload import DP, TP, ExportOptions, workload
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

_SIZE = re.compile(r"[1-9][0-9]*(Mi|Gi|Ti)")
__all__ = ["ExportOptions", "Exported", "Source", "export_kubernetes", "parse_image_options"]


@dataclass(frozen=True)
class Source:
    """What to export: exactly one of these (checked by :func:`gather`)."""

    services: tuple[str, ...] = ()
    mode: str | None = None
    preset: str | None = None
    model: str | None = None
    name: str | None = None          # the deployment name for --model
    nodes: int | None = None         # --model: pods in the group
    gpus_per_node: int | None = None


@dataclass
class Exported:
    source: str
    workloads: list[k8s.Workload]
    objects: dict[str, list[dict[str, Any]]]      # workload name -> its objects
    header: str
    notes: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        return k8s.dump([o for objs in self.objects.values() for o in objs], self.header)

    def write(self, folder: str | Path) -> list[Path]:
        """One file per service (`<name>.yaml`), each written whole or not at all."""
        if not str(folder).strip():
            raise UsageError("-o is empty", hint="give a folder, or leave -o out for stdout")
        root = Path(folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
            written = []
            for name, objs in self.objects.items():
                target = root / f"{name}.yaml"
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=root)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as fh:
                        fh.write(k8s.dump(objs, self.header))
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                written.append(target)
        except OSError as exc:
            raise UsageError(f"cannot write the manifests to {folder}: "
                             f"{exc.strerror or exc}",
                             hint="pick a folder you can write to, or leave -o out for stdout"
                             ) from None
        return written


# ---------------------------------------------------------------------------- gather


def export_kubernetes(store: Store | None, source: Source, options: ExportOptions) -> Exported:
    """Render the source's services; nothing is written (see :meth:`Exported.write`)."""
    _check_options(options)
    label, pairs = gather(store, source)
    if options.image and len(pairs) > 1:
        raise UsageError(f"--image {options.image} without a service name, but {len(pairs)} "
                         "services are exported",
                         hint="name the service it is for: --image SERVICE=IMAGE")
    exported = [p[0].name for p in pairs]
    stray = sorted(set(options.images) - set(exported))
    if stray:
        raise UsageError(f"--image names a service that is not exported: {', '.join(stray)}",
                         hint=f"exported: {', '.join(exported)}")
    notes: list[str] = []
    workloads = [workload(spec, host, options, notes) for spec, host in pairs]
    seen: dict[str, str] = {}
    for w in workloads:
        if w.name in seen:
            raise ConflictError(f"services {seen[w.name]!r} and {w.service!r} both become "
                                f"{w.name!r} in Kubernetes", hint="rename one of them")
        seen[w.name] = w.service
    render = options.render_options()
    objects = {w.name: k8s.render(w, render) for w in workloads}
    keys = [ref.key for w in workloads for ref in w.secrets]
    head = k8s.header(label, render, multinode=any(w.multinode for w in workloads),
                      secret_keys=keys)
    return Exported(label, workloads, objects, head, notes)


def gather(store: Store | None, source: Source) -> tuple[str, list[tuple[ServiceSpec,
                                                                          Host | None]]]:
    for flag, value in (("--mode", source.mode), ("--preset", source.preset),
                        ("--model", source.model), ("--name", source.name),
                        ("a service name", "" if "" in source.services else None)):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty", hint="give it a value, or leave it out")
    chosen = [what for what, given in (("a service name", bool(source.services)),
                                       ("--mode", bool(source.mode)),
                                       ("--preset", bool(source.preset)),
                                       ("--model", bool(source.model))) if given]
    if len(chosen) != 1:
        raise UsageError("give exactly one of: a service name (or --service), --mode, "
                         "--preset, --model" + (f"; got {' and '.join(chosen)}" if chosen
                                                else ""),
                         hint="e.g. gpumod export kubernetes --mode rag")
    if not source.model and (source.nodes or source.gpus_per_node or source.name):
        raise UsageError("--nodes, --gpus-per-node and --name go with --model",
                         hint="a service, mode or preset keeps its own size and name; e.g. "
                              "--model Qwen/Qwen3-8B --nodes 2")
    if source.preset:
        return f"preset {source.preset}", [(s, None) for s in preset_specs(source.preset)]
    if source.model:
        return f"model {source.model}", [(model_spec(source), None)]
    assert store is not None
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import modes as modes_ops
    from gpumod.ops import services as records

    if source.mode:
        names: Sequence[str] = modes_ops.get_mode(store, source.mode).services
        if not names:
            raise UsageError(f"mode {source.mode!r} has no services: nothing to export")
        label = f"mode {source.mode}"
    else:
        if len(set(source.services)) != len(source.services):
            raise UsageError("a service is named twice",
                             hint="name each once: NAME --service OTHER ...")
        names, label = source.services, f"service(s) {', '.join(source.services)}"
    specs = [records.get_service(store, n) for n in names]
    hosts = {s.host: hosts_ops.get_host(store, s.host) for s in specs}
    return label, [(s, hosts[s.host]) for s in specs]


def preset_specs(name: str) -> list[ServiceSpec]:
    """A service preset, or a mode preset's services, as specs (as `service add` makes them)."""
    from gpumod.catalog.presets import get_preset, service_preset

    preset = get_preset(name).preset
    if preset.kind == "service":
        return [_from_preset(preset)]
    if not preset.services:
        raise UsageError(f"mode preset {name!r} has no services: nothing to export")
    return [_from_preset(service_preset(s)) for s in preset.services]


def _from_preset(p: Any) -> ServiceSpec:
    extra: dict[str, Any] = {"preset": p.name}
    if p.docker:
        extra["docker"] = dict(p.docker)
    if p.router:
        extra["router"] = p.router.model_dump()
    return ServiceSpec(name=p.name, host="", engine=p.engine, model=p.model,
                       port=p.port or 8000, gpus=tuple(p.gpus or ()), args=tuple(p.args),
                       env=dict(p.env), sleep_mode=p.sleep, health_path=p.health_path,
                       depends_on=tuple(p.depends_on), vram_mib=p.vram_mib, extra=extra)


def model_spec(source: Source) -> ServiceSpec:
    """A catalog model (or any HF id) on vLLM, sized by --nodes and --gpus-per-node."""
    from gpumod import validate
    from gpumod.catalog.models import find_model

    model = source.model or ""
    known = find_model(model)
    if known is None and not validate.hf_id(model):  # a path or a GGUF file is a service's
        raise UsageError(f"invalid model {model!r}: --model takes a catalog model or a "
                         "Hugging Face id (owner/name)",
                         hint="`gpumod models --all` lists the catalog; for a path or a "
                              "GGUF file, define a service and export it by name")
    engine = known.engine if known else "vllm"
    nodes = source.nodes or 1
    if nodes < 1:
        raise UsageError("--nodes must be at least 1")
    if nodes > 1 and engine != "vllm":
        raise UsageError(f"{model} runs on {engine}; only vLLM runs one model across nodes")
    gpn = source.gpus_per_node
    if gpn is None:  # a node rarely has more than 8 GPUs; one node takes the biggest config
        biggest = max((c.gpus for c in known.configs), default=1) if known else 1
        gpn = 8 if nodes > 1 else max(1, biggest)
    if gpn < 1:
        raise UsageError("--gpus-per-node must be at least 1")
    args: list[str] = []
    env: dict[str, str] = {}
    if known:
        # The catalog's args for this many GPUs in all (its TP/PP are set below).
        by_count = {c.gpus: c for c in known.configs}
        config = by_count.get(nodes * gpn) or by_count.get(gpn) or \
            max(known.configs, key=lambda c: c.gpus)
        args, env = list(config.args), dict(config.env)
        if has_flag(args, DP):
            raise UsageError(f"the {config.gpus}-GPU configuration of {known.name} is data "
                             "parallel, not a tensor x pipeline split",
                             hint="use another --gpus-per-node")
        model = known.id
    name = source.name or model.rsplit("/", 1)[-1].lower()
    validate.name(name, "deployment name")
    args = replace_flag(args, TP, str(gpn)) if gpn > 1 or nodes > 1 else args
    extra: dict[str, Any] = {"catalog": known.id if known else None}
    if nodes > 1:
        extra["multinode"] = {"pods": [f"node{i}" for i in range(nodes)], "tp": gpn,
                              "pp": nodes, "gpus_per_node": gpn, "ray_port": 6379}
    return ServiceSpec(name=name, host="", engine=engine, model=model, port=8000,
                       args=tuple(args), env=env, extra=extra)


def _check_options(options: ExportOptions) -> None:
    if options.namespace is not None and not k8s.is_dns_label(options.namespace):
        raise UsageError(f"invalid namespace {options.namespace!r}",
                         hint="lower-case letters, digits and '-', at most 63")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", options.secret_name or "") or \
            len(options.secret_name) > 253:
        raise UsageError(f"invalid secret name {options.secret_name!r}",
                         hint="lower-case letters, digits, '-' and '.'")
    if options.storage_class is not None and not re.fullmatch(
            r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", options.storage_class):
        raise UsageError(f"invalid storage class {options.storage_class!r}",
                         hint="lower-case letters, digits, '-' and '.' (`kubectl get "
                              "storageclass` lists them); leave it out for the default")
    for what, size in (("--cache-size", options.cache_size), ("--shm-size", options.shm_size)):
        if size is not None and not _SIZE.fullmatch(size):
            raise UsageError(f"invalid {what} {size!r}", hint="use e.g. 100Gi, 2Ti or 512Mi")
    from gpumod.engines.docker import _IMAGE

    for image in [options.image, options.proxy_image, *options.images.values()]:
        if image is not None and (not _IMAGE.fullmatch(image) or ".." in image):
            raise UsageError(f"invalid image reference {image!r}",
                             hint="e.g. registry.example/team/server:1.2")


def parse_image_options(values: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """--image IMAGE (the one service's) or --image SERVICE=IMAGE (repeatable)."""
    bare: str | None = None
    named: dict[str, str] = {}
    for value in values:
        service, sep, image = value.partition("=")
        if not sep:
            if bare is not None:
                raise UsageError("--image without SERVICE= given twice",
                                 hint="name each: --image SERVICE=IMAGE")
            bare = value
        elif not service.strip():
            raise UsageError(f"--image {value}: the service name before '=' is empty",
                             hint="--image SERVICE=IMAGE, or --image IMAGE for the one "
                                  "service exported")
        elif service in named:
            raise UsageError(f"--image {service}= given twice",
                             hint="give each service one image")
        else:
            named[service] = image
    return bare, named
