"""Can these pods talk Ray to each other, and on which private addresses?

Ray's traffic is unauthenticated and unencrypted (ANCHORS: "private networks only"), so a
multi-node start uses only private addresses (RFC 1918, IPv4 shared/CGNAT space such as
Tailscale's, IPv6 ULA) and refuses pods that only share a public network.

1. :data:`DISCOVER_SCRIPT` (one round trip per pod): machine and boot id, the address
   sshd answered on, and every IPv4 address with its interface.
2. :func:`choose_addresses` picks one address per pod: pods that share one network
   namespace (same boot and the same addresses: one machine, e.g. a test rig with sshd on
   127.0.0.2 and 127.0.0.3) use the distinct loopback addresses their sshd answered on,
   and nothing else is ever contacted; otherwise each pod's
   private addresses, the head's first, the workers' on the head's subnet first.
3. :func:`probe_reachability`: every node listens on its address for a moment and every
   other node connects to it (TCP, both directions), so "reachable" is measured, not
   assumed. Only the chosen private (or loopback) addresses are ever contacted.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpumod.errors import CapacityError, RemoteCommandError
from gpumod.hosts.transports.base import Transport

DISCOVER_SCRIPT = r"""
echo "machine=$(cat /etc/machine-id 2>/dev/null || true)"
echo "boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)"
set -- ${SSH_CONNECTION:-}
[ $# -ge 3 ] && echo "ssh=$3"
if command -v ip >/dev/null 2>&1; then
  ip -o -4 addr show 2>/dev/null | awk '{ print "addr=" $2 " " $4 }'
elif command -v hostname >/dev/null 2>&1; then
  for a in $(hostname -I 2>/dev/null); do echo "addr=? $a/32"; done
fi
"""

# Listen on each given address (port 0: any free one), print "port=ADDR PORT" and
# "ready", accept connections until `expected` came or `seconds` passed, then exit (its
# own end: a stream's stdin is closed at once, and ssh may not pass a hang-up on).
LISTEN_SCRIPT = r"""
import select, socket, sys, time
seconds, expected = float(sys.argv[1]), int(sys.argv[2]); socks = []
for addr in sys.argv[3:]:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.bind((addr, 0)); s.listen(16); s.setblocking(False); socks.append(s)
    print("port=%s %d" % (addr, s.getsockname()[1]), flush=True)
print("ready", flush=True)
end = time.monotonic() + seconds; accepted = 0
while time.monotonic() < end and accepted < expected:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        try:
            c, _ = s.accept(); c.close(); accepted += 1
        except OSError:
            pass
"""

# Connect to each ADDR:PORT argument; print "ok ADDR:PORT" or "fail ADDR:PORT reason".
CONNECT_SCRIPT = r"""
import socket, sys
for target in sys.argv[1:]:
    addr, _, port = target.rpartition(":")
    try:
        socket.create_connection((addr.strip("[]"), int(port)), timeout=5).close()
        print("ok " + target)
    except OSError as exc:
        print("fail %s %s" % (target, exc.strerror or exc))
"""

LISTEN_SECONDS = 30
SKIP_IFACES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "kube")
# Private networks: RFC 1918, shared address space (CGNAT: Tailscale and other tunnels),
# IPv6 unique local. (Python's is_private also says yes to documentation ranges.)
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


@dataclass
class PodNet:
    """What one pod said about its network."""

    machine: str = ""
    boot: str = ""
    ssh_address: str = ""
    addresses: list[tuple[str, str, int]] = field(default_factory=list)  # (iface, ip, prefix)


def parse_discovery(stdout: str) -> PodNet:
    net = PodNet()
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "machine":
            net.machine = value.strip()
        elif key == "boot":
            net.boot = value.strip()
        elif key == "ssh":
            net.ssh_address = value.strip()
        elif key == "addr":
            iface, _, cidr = value.strip().partition(" ")
            ip, _, prefix = cidr.partition("/")
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                continue
            net.addresses.append((iface, ip, int(prefix) if prefix.isdigit() else 32))
    return net


def is_private(ip: str) -> bool:
    """A private-network address: RFC 1918, shared/CGNAT (WireGuard, Tailscale), IPv6 ULA."""
    addr = ipaddress.ip_address(ip)
    return any(addr.version == net.version and addr in net for net in PRIVATE_NETS)


def _usable(net: PodNet) -> list[tuple[str, str, int]]:
    return [a for a in net.addresses
            if not a[0].startswith(SKIP_IFACES) and not ipaddress.ip_address(a[1]).is_loopback]


def one_machine(nets: Mapping[str, PodNet]) -> bool:
    """The pods are one network namespace: same boot, same machine id, same addresses."""
    ids = {(n.machine, n.boot, tuple(sorted(n.addresses))) for n in nets.values()}
    return len(ids) == 1 and bool(next(iter(ids))[1])


def choose_addresses(nets: Mapping[str, PodNet], head: str) -> dict[str, str]:
    """One address per pod for Ray (see the module docstring); CapacityError when none."""
    pods = list(nets)
    if one_machine(nets):
        ssh = {pod: nets[pod].ssh_address for pod in pods}
        loopback = all(a and ipaddress.ip_address(a).is_loopback for a in ssh.values())
        if loopback and len(set(ssh.values())) == len(pods):
            return ssh
        raise CapacityError(f"pods {', '.join(pods)} are one machine",
                            hint=f"start the model on one pod with --pod {head} (and --gpus)")
    chosen: dict[str, list[tuple[str, str, int]]] = {}
    for pod in pods:
        private = [a for a in _usable(nets[pod]) if is_private(a[1])]
        if not private:
            public = [a[1] for a in _usable(nets[pod])]
            seen = f" (it has {', '.join(public)})" if public else ""
            raise CapacityError(
                f"pod {pod} has no private network address{seen}: Ray's traffic is "
                "unauthenticated and unencrypted, so the pods must share a private network",
                hint="put the pods on one private network (the provider's private "
                     "networking/VPC, or a WireGuard or Tailscale tunnel), then start again")
        chosen[pod] = private
    _, head_ip, head_prefix = chosen[head][0]
    subnet = ipaddress.ip_network(f"{head_ip}/{head_prefix}", strict=False)
    out = {head: head_ip}
    for pod in pods:
        if pod == head:
            continue
        same = [a for a in chosen[pod] if ipaddress.ip_address(a[1]) in subnet]
        out[pod] = (same or chosen[pod])[0][1]
    return out


def probe_reachability(transports: Mapping[str, Transport], addresses: Mapping[str, str],
                       *, python: Mapping[str, Sequence[str]] | None = None) -> None:
    """Every node reaches every other node at its chosen address (TCP), or CapacityError.

    python: per pod, the argv that runs python3 there (e.g. with the engine's PATH).
    Each pod's listener runs as a stream (open while the others connect) and exits once
    every other pod connected, or after LISTEN_SECONDS.
    """
    python = python or {}
    ports: dict[str, int] = {}
    with contextlib.ExitStack() as listeners:
        for pod, transport in transports.items():
            out = listeners.enter_context(transport.stream(
                [*python.get(pod, ["python3"]), "-c", LISTEN_SCRIPT, str(LISTEN_SECONDS),
                 str(len(transports) - 1), addresses[pod]]))
            lines: list[str] = []
            for raw in out.iter_lines():
                line = raw.strip()
                lines.append(line)
                if line.startswith("port="):
                    ports[pod] = int(line.rsplit(" ", 1)[1])
                if line == "ready" or len(lines) > 20:
                    break
            if pod not in ports:
                raise RemoteCommandError(f"{transport.label}: cannot listen on "
                                         f"{addresses[pod]}: {' | '.join(lines[-2:])}",
                                         returncode=1)
        failures: list[str] = []
        for pod, transport in transports.items():
            targets = [f"{_host(addresses[o])}:{ports[o]}" for o in transports if o != pod]
            result = transport.run([*python.get(pod, ["python3"]), "-c", CONNECT_SCRIPT,
                                    *targets], timeout=60)
            for line in result.stdout.splitlines():
                if line.startswith("fail "):
                    failures.append(f"{pod} cannot reach {line[5:]}")
            if not result.ok and not failures:
                failures.append(f"{pod}: {result.stderr.strip() or result.returncode}")
    if failures:
        raise CapacityError("the pods cannot reach each other on their private addresses: "
                            + "; ".join(failures),
                            hint="open TCP between the pods on the private network "
                                 "(firewall/security group), then start again")


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip

