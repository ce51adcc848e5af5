"""A multi-node deployment: its record, its nodes' states, stop and logs.

One model across several pods is ONE service record, on the head pod's host, with::

    extra["multinode"] = {
        "pods": ["dc1", "dc2"],            # the head first
        "tp": 8, "pp": 2, "gpus_per_node": 8,
        "ray_port": 6379, "dashboard_port": 8265,
        "nodes": {"dc1": {"ip": "10.0.0.5", "role": "head", "gpus": 8, "agent_port": 52365,
                          "pid": 4242},    # the held Ray launcher, recorded before Ray runs
                  "dc2": {"ip": "10.0.0.6", "role": "worker", "gpus": 8, "agent_port": 52365}},
        "stopped": ["dc2"],                # only while a stop could not finish everywhere
    }

vLLM runs on the head (the service's own folder, port and health, the one published
endpoint); every pod runs a Ray node (:mod:`gpumod.ops.ray_nodes`). The record is written
('starting', with every node) before any Ray node or vLLM may run; the start lives in
:mod:`gpumod.ops.multinode_start` and :mod:`gpumod.ops.multinode_launch`.

`pi list` shows the deployment with each node's state: a Ray node that is not running
makes it 'degraded'. A stop (:func:`stop_held`, reached through the lifecycle's one stop)
records 'stopping', stops vLLM, then every Ray node; a pod that cannot be reached keeps
the record 'stopping' with what was confirmed stopped, so nothing is forgotten that may
still run, and `pi stop NAME` / `pi list --prune` finish it later.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpumod.errors import (
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    TransportError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import machine, ray_nodes
from gpumod.ops import probe as probes
from gpumod.ops.services import is_multinode
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.store.db import Store
from gpumod.supervise.base import ProcessState

KEY = "multinode"
NODE_WORDS = {ProcessState.RUNNING: "running", ProcessState.CRASHED: "crashed",
              ProcessState.STOPPED: "stopped", ProcessState.UNKNOWN: "unknown"}
PORT_FREE_WAIT = 5.0


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
        dashboard_port=int(mn.get("dashboard_port") or ray_nodes.DEFAULT_DASHBOARD_PORT),
        pid=int(node["pid"]) if node.get("pid") else None)


def on_host(extra: dict[str, Any], host: str) -> tuple[tuple[int, ...], int | None] | None:
    """A multi-node record's (GPUs, Ray node pid) on `host`, or None when not a node there.

    Admission counts a starting deployment's reservation on every pod it spans.
    """
    mn = extra.get(KEY)
    if not isinstance(mn, dict):
        return None
    node = (mn.get("nodes") or {}).get(host)
    if not isinstance(node, dict):
        return None
    count = int(node.get("gpus") or mn.get("gpus_per_node") or 0)
    pid = node.get("pid")
    return tuple(range(count)), int(pid) if pid else None


def _hosts(store: Store, pods: Sequence[str]) -> dict[str, Host]:
    """The pods still known (a removed pod is left out)."""
    out = {}
    for pod in pods:
        try:
            out[pod] = hosts_ops.get_host(store, pod)
        except NotFoundError:
            continue
    return out


def update(store: Store, name: str, change: Callable[[dict[str, Any]], None], *,
           starting: bool = False) -> None:
    """Change the record's multinode data in one transaction.

    starting: only while the record says 'starting' (else ConflictError: a start
    recording a node's identity must not run it once somebody else changed the record).
    """
    def edit(state: str, extra: dict[str, Any]) -> None:
        if starting and state != machine.Phase.STARTING.value:
            raise ConflictError(f"{name} is no longer starting; its Ray node is not run")
        mn = dict(extra.get(KEY) or {})
        change(mn)
        extra[KEY] = mn

    if not services_table.change_extra(store, name, edit):
        raise ConflictError(f"{name} was removed while it was being changed")


def record_node(store: Store, name: str, pod: str, pid: int | None) -> None:
    """A Ray node's process identity, recorded while the start holds it (before Ray runs)."""
    def change(mn: dict[str, Any]) -> None:
        mn["nodes"] = {**mn["nodes"], pod: {**mn["nodes"][pod], "pid": pid}}

    update(store, name, change, starting=True)


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
        if pod in (mn.get("stopped") or []):
            return {**row, "state": "stopped"}
        try:
            transport = hosts_ops.transport_for(host)
            plan = ray_nodes.launch_plan(ray_node(spec, pod), host, {})
            state = ray_nodes.supervisor(transport, ray_node(spec, pod)).state(plan)
            if state == ProcessState.UNKNOWN:  # the supervisor hides why: ask the pod once
                transport.run(["true"], timeout=30)
            row["state"] = NODE_WORDS[state]
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
        starting = status.spec.state == "starting"  # its nodes come up one by one
        if down and not starting and status.state in ("running", "unhealthy", "sleeping"):
            status.state = "degraded"
            status.detail = "; ".join(f"{n['pod']} (Ray {n['role']}) {n['state']}"
                                      for n in down) + f"; vLLM: {status.detail}"
        left = [n for n in nodes if n.get("state") not in ("stopped", "crashed")]
        if status.spec.state == "stopping" and left and status.state != "stopping":
            # vLLM is gone but a Ray node may still run: not stopped until confirmed
            status.state = "stopping"
            status.detail = "; ".join(f"{n['pod']} (Ray {n['role']}) {n['state']}"
                                      for n in left) + \
                f"; `pi stop {status.spec.name}` finishes the stop ({status.spec.note})"


# ----------------------------------------------------------------------------- stop


def stop_nodes(store: Store, spec: ServiceSpec, pods: Sequence[str], *,
               timeout: float = ray_nodes.STOP_TIMEOUT, keep_log: bool = False
               ) -> tuple[list[str], dict[str, GpumodError]]:
    """Stop the Ray nodes of `pods` in parallel: (confirmed stopped, {pod: the error})."""
    hosts = _hosts(store, pods)  # read here: the threads only talk to pods

    def one(pod: str) -> tuple[str, GpumodError | None]:
        host = hosts.get(pod)
        if host is None:
            return pod, None  # the pod was removed: nothing of ours can be asked or left there
        try:
            ray_nodes.stop(hosts_ops.transport_for(host), host, ray_node(spec, pod),
                           timeout=timeout, keep_log=keep_log)
        except GpumodError as exc:
            return pod, exc
        return pod, None

    if not pods:
        return [], {}
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        results = list(pool.map(one, pods))
    return [p for p, exc in results if exc is None], {p: e for p, e in results if e is not None}


def stop_everywhere(store: Store, spec: ServiceSpec, pods: Sequence[str], *, vllm: bool,
                    forget: bool, timeout: float, keep_log: bool = False
                    ) -> tuple[str, list[str], dict[str, GpumodError]]:
    """vLLM on the head (when `vllm`), then the Ray nodes of `pods`.

    Returns (vLLM's outcome, the pods confirmed stopped, {pod: why not}); a pod counts
    as stopped only when everything of the deployment there is confirmed gone.
    forget: vLLM's folder on the head goes too (keep_log: its log is kept aside).
    """
    from gpumod.ops.runtime import runtime

    failed: dict[str, GpumodError] = {}
    outcome = "not-running"
    head = record(spec)["pods"][0]
    if vllm and head in pods:
        try:
            rt = runtime(store, spec, secrets={})
            if forget:
                outcome = rt.supervisor.remove(rt.plan, timeout=timeout, keep_log=keep_log)
            else:
                outcome = rt.supervisor.stop(rt.plan, timeout=timeout)
            if outcome != "not-running":
                _wait_port_free(rt, spec)
        except GpumodError as exc:
            failed[head] = exc
    _, why = stop_nodes(store, spec, list(pods), keep_log=keep_log)
    for pod, reason in why.items():
        failed.setdefault(pod, reason)
    return outcome, [p for p in pods if p not in failed], failed


def stop_held(store: Store, spec: ServiceSpec, *, forget: bool, timeout: float = 20,
              progress: Callable[[str], None] = lambda s: None, failed: str = ""
              ) -> machine.StopResult:
    """The lifecycle's stop for a multi-node deployment (the caller holds its lock).

    'stopping' is recorded first; then vLLM on the head and the Ray node of every pod not
    yet confirmed stopped. Confirmed everywhere: the record goes (forget) or says
    'stopped'. Not confirmed: it stays 'stopping', remembers the pods that are done and
    names the others, and the error (its kind kept: exit 5 for an unreachable pod) says
    `pi stop NAME` finishes it.
    """
    mn = record(spec)
    done = set(mn.get("stopped") or [])
    pending = [p for p in mn["pods"] if p not in done]
    progress(f"{spec.name}: stopping vLLM and Ray on {', '.join(pending) or 'no pod'}")
    machine.move(store, spec.name, machine.Phase.STOPPING, note="stopping")
    try:
        outcome, stopped, why = stop_everywhere(store, spec, pending, vllm=True,
                                                forget=forget, timeout=timeout)
    except KeyboardInterrupt:
        with contextlib.suppress(GpumodError):
            machine.move(store, spec.name, machine.Phase.STOPPING,
                         note="stop not confirmed: interrupted")
        raise
    done.update(stopped)
    if why:
        raise unconfirmed(store, spec, sorted(done), why, what="stop")
    if forget:
        machine.forget(store, spec.name)
    else:
        update(store, spec.name, lambda m: m.pop("stopped", None))
        machine.move(store, spec.name,
                     machine.Phase.FAILED if failed else machine.Phase.STOPPED,
                     pid=None, reserved_mib=None, note=failed)
    store.log_event("stop", host=spec.host, service=spec.name,
                    detail=f"{outcome}; Ray stopped on {', '.join(mn['pods'])}")
    return machine.StopResult(spec.name, spec.host, outcome, forget)


def unconfirmed(store: Store, spec: ServiceSpec, done: list[str],
                why: dict[str, GpumodError], *, what: str, reason: str = "") -> GpumodError:
    """Record 'stopping' with the pods confirmed stopped; the error to raise (its kind
    kept: TransportError when a pod could not be reached)."""
    problems = "; ".join(f"{p}: {e.message}" for p, e in sorted(why.items()))
    lead = f"start failed ({reason}); cleanup" if reason else what
    note = f"{lead} not confirmed on {', '.join(sorted(why))}: {problems}"

    def change(mn: dict[str, Any]) -> None:
        mn["stopped"] = sorted(done)

    with contextlib.suppress(GpumodError):  # the original error matters more
        update(store, spec.name, change)
        machine.move(store, spec.name, machine.Phase.STOPPING, reserved_mib=None, note=note)
    kind = TransportError if any(isinstance(e, TransportError) for e in why.values()) \
        else EngineError
    return kind(f"{spec.name}: could not {what} on {', '.join(sorted(why))}: {problems}",
                hint=f"the record is kept (stopped on: {', '.join(done) or 'none'}); "
                     f"run `pi stop {spec.name}` again when the pod is back, or "
                     "`pi pods remove POD` if it is gone for good")


def _wait_port_free(rt: Any, spec: ServiceSpec) -> None:
    end = time.monotonic() + PORT_FREE_WAIT
    while spec.port in probes.listening_ports(rt.transport):
        if time.monotonic() > end:
            raise EngineError(f"{spec.name} stopped but port {spec.port} on {spec.host} is "
                              "still in use", hint="another program may hold it")
        time.sleep(0.2)


# ----------------------------------------------------------------------------- logs


def log_target(store: Store, spec: ServiceSpec, node: str) -> tuple[Host, str]:
    """Where `pi logs NAME --node POD` reads: that pod's Ray node log."""
    if not is_multinode(spec):
        raise UsageError(f"{spec.name} runs on one pod: --node is for multi-node deployments")
    ray_node(spec, node)  # validates the pod is a node
    host = hosts_ops.get_host(store, node)
    return host, ray_nodes.log_path(host, spec.name)
