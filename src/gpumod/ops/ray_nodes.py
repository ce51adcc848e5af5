"""Ray nodes on pods: argv, environment, start, wait, cluster check, stop.

Each node is ``ray start --block`` under gpumod's process supervisor, in its own folder
``<root>/ray/NAME/`` on its pod (pid file, log, manifest), so it has the same life cycle
as an engine: its own process group, TERM then KILL, a log ``pi logs NAME --node POD``
follows. As vLLM's docs and ``run_cluster.sh`` do it::

    head:    ray start --block --head --node-ip-address=IP --port=RAY_PORT --num-gpus=N ...
    workers: ray start --block --address=HEAD_IP:RAY_PORT --node-ip-address=IP --num-gpus=N

with ``VLLM_HOST_IP`` / ``RAY_NODE_IP_ADDRESS`` / ``RAY_OVERRIDE_NODE_IP_ADDRESS`` set to the
node's private address, the dashboard on 127.0.0.1, usage stats off (no call home), and a
short ``--temp-dir`` per node (Ray's unix sockets live there; their paths must stay under
108 bytes). Every Ray process inherits ``GPUMOD_RAY_NODE=<marker>``: stopping a node kills
its process group, then any process still carrying the marker (Ray's own workers rename
themselves ``ray::...``), so a stop never touches another user's or deployment's Ray.

A node starts in two halves, as an engine does (:mod:`gpumod.supervise.base`): the
launcher is prepared and held, the caller records its pid in the deployment's record,
then it is released to exec ``ray start`` (:func:`launch`); :func:`wait_started` then
waits for Ray's own "Ray runtime started".
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from gpumod.errors import EngineError, GpumodError
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.supervise.base import BeforeRun, LaunchPlan, ProcessState
from gpumod.supervise.process import ProcessSupervisor

# The Ray that vLLM pinned while it shipped Ray (requirements/cuda.txt up to 0.18:
# "ray[cgraph]>=2.48.0 # Ray Compiled Graph, required for pipeline parallelism in V1").
RAY_REQUIREMENT = "ray[cgraph]>=2.48.0"
DEFAULT_RAY_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_AGENT_PORT = 52365
# Ports Ray or gpumod use by default: never picked for a Ray service port.
RESERVED_RANGES = ((8001, 8999), (10002, 19999))
MARKER_ENV = "GPUMOD_RAY_NODE"
STOP_TIMEOUT = 10.0

# Wait until `ray start` says the runtime started (or its process dies): $1 folder,
# $2 seconds. Exit 0 started, 3 died, 4 timed out.
WAIT_SCRIPT = r"""
dir=$1; seconds=$2; log="$dir/service.log"
end=$(( $(date +%s) + seconds ))
while :; do
  if grep -q "Ray runtime started" "$log" 2>/dev/null; then exit 0; fi
  pid=$(cat "$dir/service.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then exit 3; fi
  [ "$(date +%s)" -ge "$end" ] && exit 4
  sleep 0.5
done
"""

# Kill what is left of a node after its process group: processes whose environment
# holds $1 (GPUMOD_RAY_NODE=marker), and processes of the node's session $3 (its
# recorded pid) working in its folder $4: Ray's own processes rename themselves
# (setproctitle writes "ray::..." over their environment, so the marker is gone there)
# and outlive a leader that died. Then remove its temp dir $2. Prints how many.
SWEEP_SCRIPT = r"""
marker=$1; tmp=$2; sid=$3; dir=$4; n=0
ours() {
  pid=$1
  tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "$marker" && return 0
  [ -n "$sid" ] || return 1
  read -r st 2>/dev/null < "/proc/$pid/stat" || return 1
  # shellcheck disable=SC2086  # the fields after the command name: state ppid pgrp session
  set -- ${st##*) }
  [ "${4:-}" = "$sid" ] || return 1
  case $(readlink "/proc/$pid/cwd" 2>/dev/null) in "$dir"/*) return 0 ;; esac
  return 1
}
for sig in TERM KILL; do
  for e in /proc/[0-9]*/stat; do
    p=${e#/proc/}; p=${p%/stat}
    [ "$p" = "$$" ] && continue
    if ours "$p"; then kill -"$sig" "$p" 2>/dev/null && n=$((n+1)); fi
  done
  [ "$sig" = TERM ] && [ "$n" -gt 0 ] && sleep 2
done
case $tmp in /tmp/gpumod-ray-*) rm -rf -- "$tmp" ;; esac
echo "$n"
"""


@dataclass(frozen=True)
class RayNode:
    """One Ray node of a deployment, as started on its pod."""

    deployment: str
    pod: str
    role: str                  # head | worker
    ip: str
    num_gpus: int
    head_ip: str
    ray_port: int
    agent_port: int
    dashboard_port: int = 0    # head only
    binary: str = "ray"
    pid: int | None = None     # its launcher (the session of every Ray process), as recorded

    @property
    def marker(self) -> str:
        return f"{MARKER_ENV}={self.deployment}@{self.pod}"

    def argv(self, temp_dir: str) -> list[str]:
        common = [f"--node-ip-address={self.ip}", f"--num-gpus={self.num_gpus}",
                  f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={self.agent_port}",
                  "--disable-usage-stats"]
        if self.role == "head":
            return [self.binary, "start", "--block", "--head", f"--port={self.ray_port}",
                    *common, "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}"]
        return [self.binary, "start", "--block", f"--address={self.head_ip}:{self.ray_port}",
                *common]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The node's environment: the engine's (PATH, HF_HOME...) plus the node address."""
        return {**base, **address_env(self.ip), "RAY_USAGE_STATS_ENABLED": "0",
                MARKER_ENV: self.marker.split("=", 1)[1]}


def address_env(ip: str) -> dict[str, str]:
    """What vLLM's run_cluster.sh sets so Ray and vLLM agree on the node's address."""
    return {"VLLM_HOST_IP": ip, "RAY_NODE_IP_ADDRESS": ip, "RAY_OVERRIDE_NODE_IP_ADDRESS": ip}


def node_dir(host: Host, name: str) -> str:
    return posixpath.join(hosts_ops.host_root(host), "ray", name)


def temp_dir(host: Host, name: str) -> str:
    """Short and unique per pod folder and deployment (Ray's socket paths must stay short)."""
    digest = hashlib.sha256(f"{host.name}\0{hosts_ops.host_root(host)}\0{name}".encode())
    return f"/tmp/gpumod-ray-{digest.hexdigest()[:12]}"


def pick_port(preferred: int, busy: Iterable[int]) -> int:
    """`preferred` when free, else the next free port outside Ray's and gpumod's ranges."""
    taken = set(busy)
    for port in [preferred, *range(preferred + 1, 65536), *range(20000, preferred)]:
        if port in taken or any(lo <= port <= hi for lo, hi in RESERVED_RANGES):
            continue
        return port
    raise EngineError("no free port for Ray")


def launch_plan(node: RayNode, host: Host, base_env: dict[str, str]) -> LaunchPlan:
    return LaunchPlan(service=f"{node.deployment} (Ray {node.role} on {node.pod})",
                      argv=tuple(node.argv(temp_dir(host, node.deployment))),
                      env=node.env(base_env), service_dir=node_dir(host, node.deployment))


def supervisor(transport: Transport, node: RayNode) -> ProcessSupervisor:
    return ProcessSupervisor(transport, manifest={
        "engine": "ray", "deployment": node.deployment, "role": node.role, "ip": node.ip,
        "gpumod": "ray-node"})


def launch(transport: Transport, host: Host, node: RayNode, base_env: dict[str, str], *,
           before_run: BeforeRun | None = None) -> int | None:
    """Prepare the node held, let `before_run(pid)` record it, then release it.

    If before_run raises, the held launcher is stopped and Ray never runs.
    """
    return supervisor(transport, node).start(launch_plan(node, host, base_env), {},
                                             before_run=before_run)


def wait_started(transport: Transport, host: Host, node: RayNode, *,
                 timeout: float = 120) -> None:
    """Wait until Ray says the node runs; EngineError with its log's last error if not."""
    plan = launch_plan(node, host, {})
    result = transport.run_script(WAIT_SCRIPT, [plan.service_dir, str(int(timeout))],
                                  timeout=timeout + 30)
    if result.ok:
        return
    lines = [line.strip() for line in supervisor(transport, node).read_log(plan, 30)
             .splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|error|failed", line)]
    detail = (errors or lines or ["no output"])[-1]
    what = {3: "exited", 4: f"did not start within {timeout:g}s"}.get(result.returncode,
                                                                       "failed")
    raise EngineError(f"Ray {node.role} on {node.pod} {what}: {detail}",
                      hint=f"its log: {plan.log_path}")


def stop(transport: Transport, host: Host, node: RayNode, *,
         timeout: float = STOP_TIMEOUT, keep_log: bool = False) -> str:
    """TERM/KILL the node's process group, sweep what carries its marker, drop its folder
    (keep_log: its log goes to ``ray/.failed/NAME.log``, as a failed start's does)."""
    plan = launch_plan(node, host, {})
    outcome = supervisor(transport, node).remove(plan, timeout=timeout, keep_log=keep_log)
    result = transport.run_script(SWEEP_SCRIPT, [
        node.marker, temp_dir(host, node.deployment), str(node.pid or ""),
        plan.service_dir.rstrip("/")], timeout=60)
    result.check(f"{transport.label}: cleaning up the Ray {node.role}")
    return outcome


def state(transport: Transport, host: Host, node: RayNode) -> ProcessState:
    try:
        return supervisor(transport, node).state(launch_plan(node, host, {}))
    except GpumodError:
        return ProcessState.UNKNOWN


def log_path(host: Host, name: str) -> str:
    return posixpath.join(node_dir(host, name), "service.log")


@dataclass
class ClusterView:
    nodes: int
    gpus: float


def parse_status(text: str) -> ClusterView:
    """`ray status`: the active nodes and the cluster's GPUs ('0.0/4.0 GPU')."""
    nodes = 0
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and not stripped.startswith(("0", "1")):
            section = stripped[:-1]
            continue
        if section == "Active" and re.match(r"^\d+ node_", stripped):
            nodes += int(stripped.split()[0])
    match = re.search(r"([\d.]+)/([\d.]+) GPU", text)
    return ClusterView(nodes, float(match.group(2)) if match else 0.0)


def cluster(transport: Transport, binary: str, head_ip: str, port: int,
            env: dict[str, str]) -> ClusterView:
    """The running cluster as the head sees it (`ray status`)."""
    path = [f"PATH={env['PATH']}"] if env.get("PATH") else []
    argv = ["env", *path, binary, "status", f"--address={head_ip}:{port}"]
    result = transport.run(argv, timeout=90)
    result.check(f"{transport.label}: ray status")
    return parse_status(result.stdout)
