"""Where a named deployment answers: its OpenAI base URL and served model id.

Temporary home: this belongs in the operations layer (ops/), next to the
service registry, once that exists.
"""

from __future__ import annotations

from gpumod.errors import ConfigError, NotFoundError
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store


def get_service(store: Store, name: str) -> ServiceSpec:
    row = store.query_one("SELECT * FROM services WHERE name = ?", (name,))
    if row is None:
        names = [r["name"] for r in store.query("SELECT name FROM services ORDER BY name")]
        known = ", ".join(names) if names else "none yet"
        raise NotFoundError(f"unknown deployment {name!r}",
                            hint=f"known: {known}; or use --base-url URL --model ID")
    return ServiceSpec.from_row(row)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def endpoint_for(store: Store, spec: ServiceSpec) -> tuple[str, str]:
    """(base_url, model_id) of a deployment: http://<host address>:<port>/v1.

    The host's `port_map` ({"8001": "host:port"}) wins when it maps the
    service's port (pods that publish ports elsewhere); else the host's
    address; the local host is 127.0.0.1.
    """
    from gpumod.ops.hosts import get_host

    host = get_host(store, spec.host)
    mapped = host.port_map.get(str(spec.port))
    if mapped:
        address, sep, port = str(mapped).rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"pod {host.name!r} maps port {spec.port} to {mapped!r}, "
                              "which is not host:port",
                              hint="correct the pod's port map (\"PORT\": \"host:port\")")
        base = f"http://{_url_host(address.strip('[]') or '127.0.0.1')}:{port}/v1"
    elif host.is_local:
        base = f"http://127.0.0.1:{spec.port}/v1"
    else:
        address = host.address
        if not address:
            try:
                address = host.ssh_target().host
            except Exception:
                address = None
        if not address:
            raise ConfigError(f"pod {host.name!r} has no address for its endpoints",
                              hint=f"forward the port with `pi tunnel {spec.name}` and use "
                                   "--base-url http://127.0.0.1:PORT/v1")
        base = f"http://{_url_host(address)}:{spec.port}/v1"
    model = str(spec.extra.get("served_model_name") or spec.model)
    return base, model
