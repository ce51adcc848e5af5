"""How commands reach a host: a narrow base class, real implementations, a mock.

The names below load on first use: a listing of this machine's services loads the local
transport only, never the SSH one (or the other way round).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpumod.hosts.transports.base import CommandResult, Transport
    from gpumod.hosts.transports.local import LocalTransport
    from gpumod.hosts.transports.mock import MockTransport
    from gpumod.hosts.transports.ssh import SSHTransport

_WHERE = {"CommandResult": "base", "Transport": "base", "LocalTransport": "local",
          "MockTransport": "mock", "SSHTransport": "ssh"}

__all__ = ["CommandResult", "LocalTransport", "MockTransport", "SSHTransport", "Transport"]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
