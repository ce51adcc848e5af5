"""The gateway's route table, read from the service records of its host.

A :class:`Route` is one service as the gateway reaches it: the names a request's
``model`` may use (the served model name, the service name, its aliases), the
backend's address on the host's loopback, where the backend's own key lives (its 0600
env file) and what the scheduler needs to know (GPUs, memory when awake, idle TTL,
whether the engine can sleep, dependencies). :class:`Router` maps a model name to its
route. :func:`routes` builds the table; the gateway (a front end) only reads it.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from gpumod.errors import GpumodError
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store


@dataclass(frozen=True)
class Route:
    service: str
    served_model: str
    backend: str                          # http://127.0.0.1:PORT (the host's own loopback)
    engine: str = "command"
    aliases: tuple[str, ...] = ()
    key_file: str | None = None           # the backend's 0600 secrets.env on this host
    key_var: str | None = None            # the variable in it that holds the backend's key
    gpus: tuple[int, ...] = ()
    need_mib: int | None = None           # per GPU when awake (declared budget), if known
    memory_share: float | None = None     # vLLM's --gpu-memory-utilization (of each GPU's total)
    ttl: float | None = None              # idle seconds before it is put to rest; None: never
    can_sleep: bool = False
    backend_models: tuple[str, ...] = ()  # other names the engine itself serves (router mode)
    depends_on: tuple[str, ...] = ()      # services it calls itself (kept up while it is)

    def names(self) -> tuple[str, ...]:
        return (self.served_model, self.service, *self.aliases)

    def upstream_name(self, model: str) -> str:
        """The `model` to send the engine: its own names pass, a service name or an alias
        becomes the served model name."""
        return model if model == self.served_model or model in self.backend_models \
            else self.served_model

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"], data["gpus"] = list(self.aliases), list(self.gpus)
        data["backend_models"] = list(self.backend_models)
        data["depends_on"] = list(self.depends_on)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["aliases"] = tuple(values.get("aliases") or ())
        values["gpus"] = tuple(values.get("gpus") or ())
        values["backend_models"] = tuple(values.get("backend_models") or ())
        values["depends_on"] = tuple(values.get("depends_on") or ())
        return cls(**values)


class Router:
    """model name -> Route. The served model name wins over a service name, which wins
    over an alias, so an alias can never hide a real model."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = list(routes)
        self._by_name: dict[str, Route] = {}
        for rank in range(3):
            for route in self.routes:
                names = (route.served_model,) if rank == 0 else \
                    (route.service,) if rank == 1 else route.aliases
                for name in names:
                    self._by_name.setdefault(name, route)

    def resolve(self, model: str) -> Route | None:
        return self._by_name.get(model)

    def known(self) -> list[str]:
        return sorted({r.served_model for r in self.routes} | {r.service for r in self.routes})


def routes(store: Store, host_name: str, default_ttl: float | None) -> list[Route]:
    """One route per service recorded on HOST_NAME (a service whose engine or bind address
    is invalid is left out: it cannot be reached)."""
    from gpumod.engines.registry import get_engine
    from gpumod.engines.sleep import sleep_capability
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.addresses import bind_address, probe_address, service_dir
    from gpumod.ops.idle import service_ttl
    from gpumod.ops.services import is_multinode, list_services

    host = hosts_ops.get_host(store, host_name)
    table = []
    for spec in list_services(store, host_name):
        try:
            engine = get_engine(spec.engine)
            address = probe_address(bind_address(spec, host))
        except GpumodError:
            continue
        aliases = tuple(str(a) for a in spec.extra.get("aliases") or ())
        served = str(spec.extra.get("served_model") or engine.served_model(spec))
        backend_models: tuple[str, ...] = ()
        if spec.sleep_mode == "router":
            models = router_models(spec.model)
            served = str((spec.extra.get("router") or {}).get("default_model")
                         or (models[0] if models else spec.name))
            backend_models = tuple(m for m in models if m != served)
        table.append(Route(
            service=spec.name, served_model=served,
            aliases=aliases + backend_models, backend_models=backend_models,
            backend=f"http://{address}:{spec.port}", engine=spec.engine,
            key_file=os.path.join(service_dir(host, spec.name), "secrets.env"),
            key_var=engine.secret_env, gpus=tuple(spec.gpus),
            need_mib=int(spec.vram_mib) if spec.vram_mib else None,
            memory_share=memory_share(spec),
            # one model across pods is started by `pi start --pods` only: never put to rest
            ttl=None if is_multinode(spec) else service_ttl(spec, default_ttl),
            can_sleep=sleep_capability(engine, spec.sleep_mode) is not None,
            depends_on=tuple(spec.depends_on)))
    return table


def memory_share(spec: ServiceSpec) -> float | None:
    """vLLM's --gpu-memory-utilization: the share of each GPU's total it takes awake."""
    if spec.engine != "vllm":
        return None
    from gpumod.engines.base import flag_value

    share = flag_value(spec.args, ("--gpu-memory-utilization",))
    try:
        return float(share) if share else None
    except ValueError:
        return None


def router_models(models: str) -> list[str]:
    """Model names a llama-server router serves: its folder's GGUF files or preset sections."""
    try:
        if models.endswith(".ini"):
            parser = configparser.ConfigParser()
            parser.read(models)
            return sorted(parser.sections())
        return sorted(f[:-5] for f in os.listdir(models) if f.lower().endswith(".gguf"))
    except (OSError, configparser.Error):
        return []


def claim_aliases(store: Store, host_name: str, service: str, model: str,
                  extra: dict[str, Any]) -> None:
    """Check `--alias` names (extra["aliases"]) before SERVICE is recorded on HOST_NAME.

    A repeat, or the service's own name or model, is dropped (the gateway routes those
    already). A name another service on the host answers to (its served model, its name
    or one of its aliases) is refused: the gateway would route it there (a served model
    or service name outranks an alias), so the alias could never reach this service.
    So is a SERVICE name that is another service's alias: it would take that alias over.
    """
    from gpumod.errors import ConflictError

    wanted = [str(a) for a in extra.get("aliases") or ()]
    own = {service, model}
    aliases = [a for i, a in enumerate(wanted) if a not in own and a not in wanted[:i]]
    owners: dict[str, str] = {}
    for route in routes(store, host_name, None):
        if route.service == service:
            continue
        if service in route.aliases:
            raise ConflictError(f"{service!r} is an alias of {route.service!r} on the gateway "
                                f"of {host_name}: a service of that name would take it over",
                                hint="pick another name")
        for name in (route.served_model, route.service, *route.aliases):
            owners.setdefault(name, route.service)
    for alias in aliases:
        if alias in owners:
            raise ConflictError(f"--alias {alias}: the gateway on {host_name} already routes "
                                f"that name to {owners[alias]!r}",
                                hint="pick another --alias: a request for that name "
                                     "would never reach this one")
    if aliases:
        extra["aliases"] = aliases
    else:
        extra.pop("aliases", None)
