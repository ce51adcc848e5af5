"""Kubernetes manifests from workloads: Deployment + Service, or a LeaderWorkerSet.

Pure: a :class:`Workload` (what one gpumod service needs in a cluster, gathered by
``gpumod.ops.export``) becomes plain dicts, ready for ``yaml.safe_dump`` and
``kubectl apply -f``:

- one-node service: a PersistentVolumeClaim per cache volume, a Deployment (one
  replica, ``Recreate``: a rolling update would need twice the GPUs and a second
  mount of a ReadWriteOnce volume) and a ClusterIP Service;
- multi-node vLLM: a LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``) whose leader
  starts the Ray head and then ``vllm serve``, and whose workers join it, both with
  the script vLLM ships in its image for this (``multi-node-serving.sh``, as vLLM's
  LWS guide and LWS's own vLLM example do); every pod gets its own cache volume from
  ``volumeClaimTemplates``; a Service selects the leader only.

Secrets are never written: containers read them from a Secret by reference
(``secretKeyRef``). Anything a user typed that reaches ``command``, ``args`` or an
env value has ``$(`` escaped as ``$$(``, so Kubernetes never expands it.

A vLLM service with sleep enabled keeps its dev endpoints (``/sleep``,
``/collective_rpc``, ...) on the pod's loopback: the engine binds 127.0.0.1 on an
internal port and an nginx sidecar publishes only the API paths (:data:`PROXY_EXACT`,
:data:`PROXY_PREFIXES`), normalised by nginx before they are passed on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

LWS_API = "leaderworkerset.x-k8s.io/v1"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"   # 0 is the leader
# Shipped in the vllm/vllm-openai image (WORKDIR /vllm-workspace, `COPY examples examples`).
MULTI_NODE_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
DEFAULT_PROXY_IMAGE = "nginx:1.27-alpine"
API_KEY_SECRET_KEY = "api-key"      # noqa: S105 - key names inside the Secret, not values
HF_TOKEN_SECRET_KEY = "hf-token"    # noqa: S105
MANAGED_BY = {"app.kubernetes.io/managed-by": "gpumod"}
# What the sidecar passes to a loopback vLLM: the OpenAI-compatible API and the
# operational endpoints that need no dev mode. Everything else answers 404.
PROXY_PREFIXES = ("/v1/", "/v2/")
PROXY_EXACT = ("/health", "/metrics", "/version", "/ping", "/tokenize", "/detokenize",
               "/pooling", "/classify", "/score", "/rerank", "/invocations")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class SecretRef:
    """An environment variable filled from a key of the Secret (by reference only)."""

    env: str
    key: str
    optional: bool = False
    leader_only: bool = False        # multi-node: the API key is the leader's business


@dataclass(frozen=True)
class Volume:
    """A PersistentVolumeClaim mounted into the engine container."""

    suffix: str                      # claim name: <workload>-<suffix>
    mount_path: str
    size: str
    read_only: bool = False


@dataclass(frozen=True)
class Proxy:
    """The engine listens on 127.0.0.1:engine_port; nginx publishes the allowed paths."""

    engine_port: int
    image: str = DEFAULT_PROXY_IMAGE


@dataclass(frozen=True)
class MultiNode:
    nodes: int                       # pods in the group: the leader and nodes - 1 workers
    gpus_per_node: int
    ray_port: int = 6379


@dataclass(frozen=True)
class Workload:
    """One gpumod service as a cluster needs it (see gpumod.ops.export.workload)."""

    name: str                        # the Kubernetes name (a DNS-1035 label)
    service: str                     # the gpumod service name
    engine: str
    image: str
    port: int                        # the Service's port: what clients use
    container_port: int              # where the pod answers (the engine, or its proxy)
    command: tuple[str, ...] = ()    # replaces the image's entrypoint (the engine argv)
    args: tuple[str, ...] = ()       # after the image's entrypoint (docker CMD)
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[SecretRef, ...] = ()
    extra_ports: tuple[tuple[int, int], ...] = ()   # (container port, service port)
    gpus: int = 0
    health_path: str = "/health"
    startup_seconds: int = 600       # how long the engine may take before it is healthy
    volumes: tuple[Volume, ...] = ()
    shm_size: str | None = None
    working_dir: str | None = None
    run_as_user: int | None = None
    proxy: Proxy | None = None
    multinode: MultiNode | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderOptions:
    namespace: str | None = None
    secret_name: str = "gpumod"  # noqa: S105 - the Secret's name, not a value
    storage_class: str | None = None


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.fullmatch(text))


def escape(text: str) -> str:
    """Keep Kubernetes from expanding $(VAR) in a value that came from the user."""
    return text.replace("$(", "$$(")


# ---------------------------------------------------------------------------- pieces


def _metadata(name: str, options: RenderOptions, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if options.namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = {**MANAGED_BY, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _labels(w: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": w.name}


def _env(w: Workload, options: RenderOptions, *, leader: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": k, "value": escape(v)} for k, v in w.env.items()]
    for ref in w.secrets:
        if ref.leader_only and not leader:
            continue
        out.append({"name": ref.env, "valueFrom": {"secretKeyRef": {
            "name": options.secret_name, "key": ref.key, "optional": ref.optional}}})
    return out


def _probe(w: Workload, *, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": w.health_path, "port": w.container_port},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": timeout}


def _probes(w: Workload) -> dict[str, Any]:
    """Startup covers the model load; after it, readiness gates traffic, liveness restarts.

    With a proxy the probes go through it (an httpGet probe may target any port of
    the pod), so the engine container is restarted when its API stops answering.
    """
    return {"startupProbe": _probe(w, period=10, failures=max(3, -(-w.startup_seconds // 10))),
            "readinessProbe": _probe(w, period=5, failures=3),
            "livenessProbe": _probe(w, period=15, failures=4)}


def _shm(size: str) -> dict[str, Any]:
    # vLLM's tensor parallel workers talk through shared memory; the default is 64 MiB.
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def _engine_container(w: Workload, options: RenderOptions, *, role: str) -> dict[str, Any]:
    leader = role != "worker"
    c: dict[str, Any] = {"name": "engine", "image": w.image}
    if role == "single":
        if w.command:
            c["command"] = [escape(a) for a in w.command]
        if w.args:
            c["args"] = [escape(a) for a in w.args]
    else:
        c["command"] = _ray_command(w, role)
    if w.working_dir:
        c["workingDir"] = w.working_dir
    env = _env(w, options, leader=leader)
    if env:
        c["env"] = env
    if leader and not w.proxy:
        c["ports"] = [{"name": "http", "containerPort": w.container_port, "protocol": "TCP"},
                      *({"name": f"port-{cp}", "containerPort": cp, "protocol": "TCP"}
                        for cp, _ in w.extra_ports)]
    if w.gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": str(w.gpus)}}
    mounts = [{"name": v.suffix, "mountPath": v.mount_path, **({"readOnly": True}
                                                               if v.read_only else {})}
              for v in w.volumes]
    if w.shm_size:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        c["volumeMounts"] = mounts
    if leader:
        c.update(_probes(w))
    if w.run_as_user is not None:
        c["securityContext"] = {"runAsUser": w.run_as_user}
    return c


def _ray_command(w: Workload, role: str) -> list[str]:
    """The leader starts the Ray head (dashboard on loopback), waits for the whole group,
    then execs the engine argv passed as "$@"; a worker joins the head and blocks.

    LWS puts LWS_GROUP_SIZE and LWS_LEADER_ADDRESS into every container's environment;
    the shell reads them, so nothing user-typed is ever part of the script itself.
    """
    assert w.multinode is not None
    port = int(w.multinode.ray_port)
    if role == "leader":
        script = (f'bash {MULTI_NODE_SCRIPT} leader --ray_cluster_size="$LWS_GROUP_SIZE" '
                  f'--ray_port={port} --dashboard-host=127.0.0.1 && exec "$@"')
        return ["/bin/sh", "-c", script, "gpumod-leader", *(escape(a) for a in w.command)]
    script = f'exec bash {MULTI_NODE_SCRIPT} worker --ray_address="$LWS_LEADER_ADDRESS" ' \
             f'--ray_port={port}'
    return ["/bin/sh", "-c", script]


def _proxy_container(w: Workload) -> dict[str, Any]:
    assert w.proxy is not None
    return {"name": "proxy", "image": w.proxy.image,
            "ports": [{"name": "http", "containerPort": w.container_port, "protocol": "TCP"}],
            "volumeMounts": [{"name": "proxy-conf", "mountPath": "/etc/nginx/conf.d",
                              "readOnly": True}]}


def proxy_config(listen_port: int, engine_port: int) -> str:
    """nginx server block: only the allowed paths reach the loopback engine.

    Every location passes a URI of its own (``proxy_pass .../v1/``), so nginx sends the
    *normalised* path upstream: ``/v1/../sleep`` is matched and sent as ``/sleep``,
    which no location allows.
    """
    upstream = f"http://127.0.0.1:{int(engine_port)}"
    lines = ["# gpumod: vLLM runs with sleep mode (VLLM_SERVER_DEV_MODE=1) on the pod's",
             "# loopback; its dev endpoints stay there. Only these paths are published.",
             "server {",
             f"    listen {int(listen_port)};",
             "    client_max_body_size 64m;",
             "    proxy_http_version 1.1;",
             '    proxy_set_header Connection "";',
             "    proxy_set_header Host $host;",
             "    proxy_buffering off;            # streamed completions go out as they come",
             "    proxy_request_buffering off;",
             "    proxy_read_timeout 3600s;",
             "    proxy_send_timeout 3600s;"]
    lines += [f"    location {p} {{ proxy_pass {upstream}{p}; }}" for p in PROXY_PREFIXES]
    lines += [f"    location = {p} {{ proxy_pass {upstream}{p}; }}" for p in PROXY_EXACT]
    lines += ["    location / { return 404; }", "}", ""]
    return "\n".join(lines)


def _pod_spec(w: Workload, options: RenderOptions, *, role: str) -> dict[str, Any]:
    containers = [_engine_container(w, options, role=role)]
    volumes: list[dict[str, Any]] = []
    if role == "single":
        volumes += [{"name": v.suffix, "persistentVolumeClaim": {
            "claimName": f"{w.name}-{v.suffix}", **({"readOnly": True} if v.read_only else {})}}
            for v in w.volumes]
    if w.shm_size:
        volumes.append(_shm(w.shm_size))
    if w.proxy and role != "worker":
        containers.append(_proxy_container(w))
        volumes.append({"name": "proxy-conf", "configMap": {"name": f"{w.name}-proxy"}})
    spec: dict[str, Any] = {"containers": containers}
    if volumes:
        spec["volumes"] = volumes
    return spec


def _claim_spec(v: Volume, options: RenderOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                            "resources": {"requests": {"storage": v.size}}}
    if options.storage_class:
        spec["storageClassName"] = options.storage_class
    return spec


def _service(w: Workload, options: RenderOptions, selector: dict[str, str]) -> dict[str, Any]:
    ports = [{"name": "http", "port": w.port, "targetPort": w.container_port, "protocol": "TCP"}]
    ports += [{"name": f"port-{sp}", "port": sp, "targetPort": cp, "protocol": "TCP"}
              for cp, sp in w.extra_ports]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(w.name, options, _labels(w)),
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports}}


# ---------------------------------------------------------------------------- objects


def render(w: Workload, options: RenderOptions) -> list[dict[str, Any]]:
    """Every object one workload needs, in the order `kubectl apply` should create them."""
    objects: list[dict[str, Any]] = []
    if w.proxy:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": _metadata(f"{w.name}-proxy", options, _labels(w)),
                        "data": {"default.conf": proxy_config(w.container_port,
                                                              w.proxy.engine_port)}})
    if w.multinode:
        objects.append(_leader_worker_set(w, options))
        objects.append(_service(w, options, {LWS_NAME_LABEL: w.name, LWS_INDEX_LABEL: "0"}))
        return objects
    for v in w.volumes:
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": _metadata(f"{w.name}-{v.suffix}", options, _labels(w)),
                        "spec": _claim_spec(v, options)})
    labels = _labels(w)
    objects.append({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(w.name, options, labels, w.annotations),
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": {**MANAGED_BY, **labels}},
                              "spec": _pod_spec(w, options, role="single")}}})
    objects.append(_service(w, options, labels))
    return objects


def _leader_worker_set(w: Workload, options: RenderOptions) -> dict[str, Any]:
    assert w.multinode is not None
    template_labels = {**MANAGED_BY, **_labels(w)}
    lwt: dict[str, Any] = {
        "size": w.multinode.nodes,
        # A lost pod breaks the Ray group and vLLM with it: restart the whole group.
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": {"metadata": {"labels": {**template_labels, "role": "leader"}},
                           "spec": _pod_spec(w, options, role="leader")},
        "workerTemplate": {"metadata": {"labels": {**template_labels, "role": "worker"}},
                           "spec": _pod_spec(w, options, role="worker")},
    }
    if w.volumes:
        # Each pod loads its own shards: one cache volume per pod, kept across restarts.
        lwt["volumeClaimTemplates"] = [{"metadata": {"name": v.suffix},
                                        "spec": _claim_spec(v, options)} for v in w.volumes]
    return {"apiVersion": LWS_API, "kind": "LeaderWorkerSet",
            "metadata": _metadata(w.name, options, _labels(w), w.annotations),
            "spec": {"replicas": 1, "startupPolicy": "LeaderCreated",
                     "leaderWorkerTemplate": lwt}}


# ---------------------------------------------------------------------------- output


def header(source: str, options: RenderOptions, *, multinode: bool,
           secret_keys: Iterable[str]) -> str:
    """The comment that opens every exported file: what it is and what to create first."""
    keys = sorted(set(secret_keys))
    literal = {API_KEY_SECRET_KEY: '--from-literal=api-key="$PI_API_KEY"',
               HF_TOKEN_SECRET_KEY: '--from-literal=hf-token="$HF_TOKEN"'}
    ns = f" -n {options.namespace}" if options.namespace else ""
    lines = [f"# Generated by `gpumod export kubernetes` from {source}.",
             "# Secrets are referenced by name, never written here. Create them first:",
             f"#   kubectl create secret generic {options.secret_name}{ns} "
             + " ".join(literal.get(k, f"--from-literal={k}=...") for k in keys)]
    if HF_TOKEN_SECRET_KEY in keys:
        lines.append("#   (hf-token is optional: only gated models need it)")
    if multinode:
        lines.append("# LeaderWorkerSet needs the LWS controller in the cluster "
                     "(https://lws.sigs.k8s.io/docs/installation/).")
    lines.append(f"# Apply with: kubectl apply{ns} -f <this file or folder>")
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the proxy's config) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: Sequence[dict[str, Any]], head: str = "") -> str:
    """Multi-document YAML (`---` between objects), the header comment first."""
    docs = [yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                      width=1 << 16, allow_unicode=True) for obj in objects]
    return head + "---\n" + "---\n".join(docs)


def lws_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a LeaderWorkerSet's top-level fields.

    Written from the LWS CRD's OpenAPI schema; the pod templates inside are checked as
    Kubernetes PodTemplates instead (see the tests).
    """
    text = resources.files("gpumod.export").joinpath("schemas", "leaderworkerset-v1.json")
    return json.loads(text.read_text(encoding="utf-8"))
