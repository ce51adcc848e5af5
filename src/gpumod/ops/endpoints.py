"""Where a deployment answers: its OpenAI base URL and the model name clients send."""

from __future__ import annotations

from gpumod.errors import ConfigError
from gpumod.hosts.model import Host
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store


def endpoint_url(host: Host, port: int) -> str:
    """http://<address>:<port>/v1, or where the host's port map sends that port."""
    mapped = host.port_map.get(str(port))
    if mapped:
        base = mapped if "://" in mapped else f"http://{mapped}"
        _, sep, mapped_port = base.split("://", 1)[1].rstrip("/").rpartition(":")
        if not sep or not mapped_port.isdigit():
            raise ConfigError(f"pod {host.name!r} maps port {port} to {mapped!r}, not HOST:PORT",
                              hint=f"fix it with `pi pods expose {host.name} --port {port}=HOST:PORT`")
        return base.rstrip("/") + "/v1"
    address = "127.0.0.1" if host.is_local else (host.address or host.ssh_target().host)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{port}/v1"


def endpoint_for(store: Store, spec: ServiceSpec) -> tuple[str, str]:
    """(base_url, served model id) of a deployment, as `pi prompt` and `gpumod plan` use it."""
    from gpumod.engines.registry import get_engine
    from gpumod.ops.hosts import get_host

    host = get_host(store, spec.host)
    served = spec.extra.get("served_model") or get_engine(spec.engine).served_model(spec)
    return endpoint_url(host, spec.port), str(served)


def deployment_endpoint(store: Store, name: str, pod: str | None = None) -> tuple[str, str]:
    """(base_url, served model id) of the deployment NAME; with POD, it must run there."""
    from gpumod import validate
    from gpumod.errors import NotFoundError
    from gpumod.ops.hosts import get_host
    from gpumod.ops.services import get_service

    validate.name(name, "deployment name")
    spec = get_service(store, name)
    if pod:
        host = get_host(store, pod)
        if spec.host != host.name:
            raise NotFoundError(f"deployment {name!r} is on pod {spec.host!r}, not {pod!r}",
                                hint=f"drop --pod, or use --pod {spec.host}")
    return endpoint_for(store, spec)
