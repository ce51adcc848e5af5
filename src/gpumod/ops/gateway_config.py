"""The gateway's settings: what `gpumod gateway start` writes and the gateway process reads.

Plain data (no secrets: the key reaches the gateway by environment). It lives in ops
because both sides use it: ops.gateway writes it as ``<root>/gateway/config.json`` on
the host, and the gateway (gpumod.gateway.server, a front end over ops) loads it.
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
class GatewayConfig:
    """Settings of one gateway process."""

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
