"""The gateway's settings and its route table.

A :class:`Route` is one service as the gateway reaches it: the names a request's
``model`` may use (the served model name, the service name, its aliases), the
backend's address on the host's loopback, where the backend's own key lives (its
0600 env file) and what the scheduler needs to know (GPUs, memory when awake, TTL).
Routes are built from the service records by the adapter; this module is plain data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from gpumod.errors import ConfigError

DEFAULT_PORT = 8000
DEFAULT_QUEUE_WAIT = 120.0      # seconds a request may wait for another model's requests
DEFAULT_START_TIMEOUT = 600.0   # seconds a wake or start may take (vLLM cold starts are long)


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


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of one gateway process (no secrets: the key comes by environment)."""

    host: str = "local"                   # the host whose services it routes to
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    default_ttl: float | None = None      # host default idle TTL (None: only per-service TTLs)
    queue_wait: float = DEFAULT_QUEUE_WAIT
    start_timeout: float = DEFAULT_START_TIMEOUT
    refresh: float = 15.0                 # seconds between checks of the services' real state
    margin_mib: int = 512                 # kept free on a GPU when deciding what fits

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatewayConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown gateway setting(s): {', '.join(unknown)}",
                              hint="the gateway config was written by another gpumod version")
        return cls(**data)

    @classmethod
    def load(cls, path: str) -> GatewayConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_json(json.load(fh))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the gateway config {path}: {exc}") from exc


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
