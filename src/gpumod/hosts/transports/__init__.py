"""How commands reach a host: a narrow base class, real implementations, a mock."""

from gpumod.hosts.transports.base import CommandResult, Transport
from gpumod.hosts.transports.local import LocalTransport
from gpumod.hosts.transports.mock import MockTransport
from gpumod.hosts.transports.ssh import SSHTransport

__all__ = ["CommandResult", "LocalTransport", "MockTransport", "SSHTransport", "Transport"]
