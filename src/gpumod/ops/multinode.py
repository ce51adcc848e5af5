"""A multi-node deployment: its record, its nodes' states, stop and logs.

One model across several pods is ONE service record, on the head pod's host, with::

    extra["multinode"] = {
        "pods": ["dc1", "dc2"],            # the head first
        "tp": 8, "pp": 2, "gpus_per_node": 8,
        "ray_port": 6379, "dashboard_port": 8265,
        "nodes": {"dc1": {"ip": "10.0.0.5", "role": "head", "gpus": 8, "agent_port": 52365},
                  "dc2": {"ip": "10.0.0.6", "role": "worker", "gpus": 8, "agent_port": 52365}},
        "stopped": ["dc2"],                # only while a stop could not finish everywhere
    }

vLLM runs on the head (the service's own folder, port and health, the one published
endpoint); every pod runs a Ray node (:mod:`gpumod.ops.ray_nodes`). `pi list` shows the
deployment with each node's state: a Ray node that is not running makes it 'degraded'.
`pi stop` stops vLLM, then every Ray node; a pod that cannot be reached keeps the record
(with what was confirmed stopped), so nothing is forgotten that may still run.
The start lives in :mod:`gpumod.ops.multinode_start`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpumod.errors import EngineError, GpumodError, NotFoundError, TransportError, UsageError
from gpumod.hosts.model import Host
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import probe as probes
from gpumod.ops import ray_nodes
from gpumod.ops import services as records
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store
from gpumod.supervise.base import ProcessState

KEY = "multinode"
NODE_WORDS = {ProcessState.RUNNING: "running", ProcessState.CRASHED: "crashed",
              ProcessState.STOPPED: "stopped", ProcessState.UNKNOWN: "unknown"}


def is_multinode(spec: ServiceSpec) -> bool:
    return isinstance(spec.extra.get(KEY), dict)


def record(spec: ServiceSpec) -> dict[str, Any]:
    return dict(spec.extra.get(KEY) or {})


def ray_node(spec: ServiceSpec, pod: str) -> ray_nodes.RayNode:
    """The Ray node of `pod` as the record describes it."""
    mn = record(spec)
    node = (mn.get("nodes") or {}).get(pod)
    if node is None:
        raise UsageError(f"{pod} is not a node of {spec.name}",
                         hint=f"its nodes: {', '.join(mn.get('pods') or [])}")
    head = mn["pods"][0]
    return ray_nodes.RayNode(
        deployment=spec.name, pod=pod, role=str(node["role"]), ip=str(node["ip"]),
        num_gpus=int(node.get("gpus") or mn.get("gpus_per_node") or 0),
        head_ip=str(mn["nodes"][head]["ip"]), ray_port=int(mn["ray_port"]),
        agent_port=int(node.get("agent_port") or ray_nodes.DEFAULT_AGENT_PORT),
        dashboard_port=int(mn.get("dashboard_port") or ray_nodes.DEFAULT_DASHBOARD_PORT))


def _hosts(store: Store, pods: Sequence[str]) -> dict[str, Host]:
    """The pods still known (a removed pod is left out)."""
    out = {}
    for pod in pods:
        try:
            out[pod] = hosts_ops.get_host(store, pod)
        except NotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------- list


def node_states(store: Store, spec: ServiceSpec) -> list[dict[str, Any]]:
    """Each node's Ray process state, pods asked in parallel (unreachable stays a word)."""
    mn = record(spec)
    pods: list[str] = list(mn.get("pods") or [])

    hosts = _hosts(store, pods)  # the store is read here: threads only talk to pods

    def one(pod: str) -> dict[str, Any]:
        node = (mn.get("nodes") or {}).get(pod) or {}
        row = {"pod": pod, "role": node.get("role", "?"), "ip": node.get("ip", "")}
        host = hosts.get(pod)
        if host is None:
            return {**row, "state": "unknown", "detail": f"pod {pod} is no longer known"}
        try:
            sup = ray_nodes.supervisor(hosts_ops.transport_for(host), ray_node(spec, pod))
            plan = ray_nodes.launch_plan(ray_node(spec, pod), host, {})
            row["state"] = NODE_WORDS[sup.state(plan)]
        except TransportError as exc:
            row["state"], row["detail"] = "unreachable", exc.message
        except GpumodError as exc:
            row["state"], row["detail"] = "unknown", exc.message
        return row

    if not pods:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        return list(pool.map(one, pods))


def refine(store: Store, statuses: Sequence[Any]) -> None:
    """Add each multi-node deployment's nodes; a node not running makes it 'degraded'."""
    for status in statuses:
        if not is_multinode(status.spec) or status.state in ("unreachable", "unknown"):
            continue
        nodes = node_states(store, status.spec)
        status.nodes = nodes
        down = [n for n in nodes if n.get("state") != "running"]
        if down and status.state in ("running", "starting", "unhealthy", "sleeping"):
            status.state = "degraded"
            status.detail = "; ".join(f"{n['pod']} (Ray {n['role']}) {n['state']}"
                                      for n in down) + f"; vLLM: {status.detail}"


# ----------------------------------------------------------------------------- stop


def stop_nodes(store: Store, spec: ServiceSpec, pods: Sequence[str], *,
               timeout: float = ray_nodes.STOP_TIMEOUT
               ) -> tuple[list[str], dict[str, GpumodError]]:
    """Stop the Ray nodes of `pods` in parallel: (confirmed stopped, {pod: the error})."""
    hosts = _hosts(store, pods)

    def one(pod: str) -> tuple[str, GpumodError | None]:
        host = hosts.get(pod)
        if host is None:
            return pod, None  # the pod was removed: nothing of ours can be asked or left there
        try:
            ray_nodes.stop(hosts_ops.transport_for(host), host, ray_node(spec, pod),
                           timeout=timeout)
        except GpumodError as exc:
            return pod, exc
        return pod, None

    if not pods:
        return [], {}
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        results = list(pool.map(one, pods))
    return [p for p, exc in results if exc is None], {p: e for p, e in results if e is not None}


def stop(store: Store, spec: ServiceSpec, *, timeout: float = 20) -> str:
    """vLLM on the head, then every Ray node; the record goes only when all are confirmed."""
    from gpumod.ops import launch as launcher

    mn = record(spec)
    head = mn["pods"][0]
    done = set(mn.get("stopped") or [])
    failed: dict[str, GpumodError] = {}
    outcome = "not-running"
    if head not in done:
        try:
            rt = launcher.runtime(store, spec, secrets={})
            outcome = rt.stop(timeout=timeout)
            _wait_port_free(rt, spec)
        except GpumodError as exc:
            failed[head] = exc
    pending = [p for p in mn["pods"] if p not in done and p not in failed]
    stopped, why = stop_nodes(store, spec, pending)
    failed.update(why)
    done.update(stopped)
    if failed:
        _save_progress(store, spec, sorted(done))
        kind = TransportError if any(isinstance(e, TransportError) for e in failed.values()) \
            else EngineError
        raise kind(f"{spec.name}: could not stop on {', '.join(sorted(failed))}: "
                   + "; ".join(f"{p}: {e.message}" for p, e in sorted(failed.items())),
                   hint=f"the record is kept (stopped on: {', '.join(sorted(done)) or 'none'}); "
                        f"run `pi stop {spec.name}` again when the pod is back, or "
                        "`pi pods remove POD` if it is gone for good")
    try:  # the head's service folder: vLLM's log and manifest go with the record
        launcher.runtime(store, spec, secrets={}).stop(timeout=5, forget=True)
    except GpumodError:
        pass  # best effort: the engine is confirmed stopped; only a folder could stay
    records.drop(store, spec.name)
    store.log_event("stop", host=spec.host, service=spec.name,
                    detail=f"{outcome}; Ray stopped on {', '.join(mn['pods'])}")
    return outcome


def _wait_port_free(rt: Any, spec: ServiceSpec) -> None:
    end = time.monotonic() + 5
    while spec.port in probes.listening_ports(rt.transport):
        if time.monotonic() > end:
            raise EngineError(f"{spec.name} stopped but port {spec.port} on {spec.host} is "
                              "still in use", hint="another program may hold it")
        time.sleep(0.2)


def _save_progress(store: Store, spec: ServiceSpec, done: list[str]) -> None:
    """Remember which nodes are confirmed stopped (a later stop skips them)."""
    current = records.get_service(store, spec.name)
    mn = {**record(current), "stopped": done}
    state = "stopped" if mn["pods"][0] in done else current.state
    records.save_extra(store, spec.name, {**current.extra, KEY: mn}, state=state)


# ----------------------------------------------------------------------------- logs


def log_target(store: Store, spec: ServiceSpec, node: str) -> tuple[Host, str]:
    """Where `pi logs NAME --node POD` reads: that pod's Ray node log."""
    if not is_multinode(spec):
        raise UsageError(f"{spec.name} runs on one pod: --node is for multi-node deployments")
    ray_node(spec, node)  # validates the pod is a node
    host = hosts_ops.get_host(store, node)
    return host, ray_nodes.log_path(host, spec.name)
