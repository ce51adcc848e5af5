"""The launch of a multi-node deployment under the lifecycle's guarantees.

What :mod:`gpumod.ops.launch` is for one pod, for one model across pods:

1. under every pod's host lock (shared, in name order) and the deployment's lock, ONE
   record is inserted on the head's host, 'starting', naming every node, before anything
   runs on any pod;
2. the GPU start slots of every pod (vLLM profiles memory on every GPU of the
   deployment), then every pod's admission lock: live GPU figures per pod, other starts'
   reservations on those pods counted (:func:`gpumod.ops.admission.pending_on`), the
   planner's tp x pp sizing (:mod:`gpumod.planner.multinode`), this start's reservation;
3. each Ray node is prepared HELD, its pid recorded in the record, then released
   (:func:`gpumod.ops.ray_nodes.launch`); the head first, then the workers; then every
   node's "Ray runtime started" and a cluster check (every node joined, enough GPUs);
4. vLLM on the head the same way (pid recorded before it runs), health awaited on the
   head while its log streams; the record says 'running'.

Any failure, Ctrl+C, SIGTERM or SIGHUP after step 1 records 'stopping' and stops vLLM
and every Ray node launched so far. Confirmed gone everywhere: the record is removed.
Not confirmed (a pod dropped): the record stays 'stopping', remembers the pods that are
done and names the others, and `pi stop NAME` or `pi list --prune` finishes it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gpumod.engines.registry import get_engine
from gpumod.errors import (
    Cancelled,
    CapacityError,
    EngineError,
    GpumodError,
    RemoteCommandError,
    UsageError,
)
from gpumod.ops import lifecycle, locks, machine, ray_nodes
from gpumod.ops import multinode as mn_ops
from gpumod.ops import services as records
from gpumod.ops.addresses import bind_address, service_dir
from gpumod.ops.endpoints import endpoint_url
from gpumod.ops.launch import wait_healthy
from gpumod.ops.runtime import LaunchOptions, Runtime, runtime
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

if TYPE_CHECKING:
    from gpumod.ops.multinode_start import PodCheck, Shape
    from gpumod.ops.startplan import StartRequest

Output = Callable[[str], None]
CLUSTER_WAIT = 90.0


@dataclass
class Launch:
    """What one multi-node start has to run, and what it ran so far (for the cleanup)."""

    checks: list[PodCheck]
    shape: Shape
    facts: Any                      # the model's facts (None: no VRAM check)
    api_key: str
    cached: bool                    # the model is in each pod's HF cache
    deadline: float
    started: list[str] = field(default_factory=list)   # pods whose Ray node was launched
    vllm: Runtime | None = None     # set once vLLM was asked to start

    @property
    def pods(self) -> list[str]:
        return [c.host.name for c in self.checks]


def launch(store: Store, draft: ServiceSpec, run: Launch, req: StartRequest, *,
           listening: set[int], out: Output, log: Output) -> ServiceSpec:
    """Record, admit, start Ray and vLLM, wait healthy; see the module docstring."""
    name, head = draft.name, run.checks[0]
    what = f"pi start {name}"
    with contextlib.ExitStack() as held:
        for pod in sorted(run.pods):
            held.enter_context(locks.host_lock(pod, shared=True, what=what, progress=out))
        held.enter_context(lifecycle.held(name, what, progress=out))
        # recorded 'starting' (port and GPUs taken, every node named) before anything runs
        spec = records.reserve(store, draft, head.host, listening=listening, port=req.port)
        try:
            return _launch(store, spec, run, req, out, log)
        except BaseException as exc:
            _failed(store, spec, run, exc)
            raise  # _failed raises; this keeps the type checkers sure


def _launch(store: Store, spec: ServiceSpec, run: Launch, req: StartRequest, out: Output,
            log: Output) -> ServiceSpec:
    name, head = spec.name, run.checks[0]
    with _start_slots(run, out):
        args = _admit(store, spec, run, req, out)
        if tuple(args) != spec.args:
            records.save_args(store, name, args)
            spec = spec.with_(args=tuple(args))
        nodes = {c.host.name: replace(mn_ops.ray_node(spec, c.host.name), binary=c.ray or "ray")
                 for c in run.checks}
        out(f"{name}: starting the Ray head on {head.host.name} "
            f"({nodes[head.host.name].ip}:{nodes[head.host.name].ray_port}) and workers on "
            f"{', '.join(run.pods[1:])}")
        for c in run.checks:  # one at a time: each pid is recorded before its Ray runs
            pod = c.host.name
            run.started.append(pod)
            ray_nodes.launch(c.transport, c.host, nodes[pod], _base_env(c, run.cached),
                             before_run=functools.partial(_record_node, store, name, pod))
        for c in run.checks:  # they start side by side; wait for each in turn
            ray_nodes.wait_started(c.transport, c.host, nodes[c.host.name])
        _wait_cluster(spec, run, nodes[head.host.name], out)
        rt = _vllm_runtime(store, spec, run, nodes[head.host.name])
        mn = mn_ops.record(spec)
        out(f"{name}: starting vLLM on {head.host.name} (port {spec.port}, tp {mn['tp']} x "
            f"pp {mn['pp']}, Ray)")
        run.vllm = rt
        pid = rt.supervisor.start(
            rt.plan, rt.secrets,
            before_run=lambda held: machine.record_identity(store, name, held))
        took = wait_healthy(rt, pid, run.deadline, log)
    current = records.get_service(store, name)  # the nodes' pids were recorded there
    done = machine.ready(store, rt.spec.with_(
        pid=pid, env=dict(rt.plan.env),
        extra={**rt.spec.extra, mn_ops.KEY: current.extra[mn_ops.KEY], "pid": pid,
               "argv": list(rt.plan.argv)}))
    store.log_event("started", host=spec.host, service=name,
                    detail=f"vllm {spec.model} on {', '.join(mn['pods'])} (tp {mn['tp']} x "
                           f"pp {mn['pp']}), port {spec.port}, healthy after {took:.1f}s")
    out(f"{name}: healthy after {took:.1f}s")
    return done


@contextlib.contextmanager
def _start_slots(run: Launch, out: Output) -> Iterator[None]:
    """Every pod's GPU start slots, pods in name order (vLLM profiles memory at start on
    every GPU of the deployment, so no other such start may run on them meanwhile)."""
    gpus = range(run.shape.gpus_per_node)
    with contextlib.ExitStack() as stack:
        for pod in sorted(run.pods):
            stack.enter_context(locks.start_slots(pod, gpus, wait=run.deadline,
                                                  what=f"start across {', '.join(run.pods)}",
                                                  progress=out))
        yield


def _admit(store: Store, spec: ServiceSpec, run: Launch, req: StartRequest,
           out: Output) -> list[str]:
    """The planner's tp x pp sizing on every pod's live figures, and this start's
    reservation, inside every pod's admission lock (pods in name order)."""
    from gpumod.hosts.gpus import snapshot as take
    from gpumod.ops import admission
    from gpumod.planner import multinode as sizing
    from gpumod.planner.admission import quantized_variants

    args, name = list(spec.args), spec.name
    with contextlib.ExitStack() as stack:
        for pod in sorted(run.pods):
            stack.enter_context(locks.admission_lock(pod, progress=out))
        if run.facts is None:
            return args
        nodes = []
        for c in run.checks:
            pod = c.host.name
            try:
                snap = take(c.transport)
            except RemoteCommandError:  # nvidia-smi there but failing: no live figures
                snap = None
            if snap is None:
                out(f"{name}: no VRAM check: nvidia-smi answered nothing on {pod}")
                return args
            extra = admission.pending_on(store, pod, c.transport, snap, exclude=name)
            mine = range(run.shape.gpus_per_node)
            if extra.mib:
                out(f"{name}: counting {extra.describe(mine)} on {pod}")
            usage = [u for u in admission.with_pending(list(snap.gpus), extra)
                     if u.gpu.index in mine]
            nodes.append(sizing.NodeGPUs(
                pod, [u.gpu.memory_mib for u in usage],
                [u.gpu.memory_mib if u.free_mib is None else u.free_mib for u in usage],
                [u.gpu.name for u in usage]))
        from gpumod.ops.sizing import engine_version

        version = engine_version(run.checks[0].host, "vllm", req.vllm_version)
        try:
            result = sizing.size(run.facts, model=spec.model, tp=run.shape.tp,
                                 pp=run.shape.pp, nodes=nodes, engine_args=tuple(args),
                                 version=version,
                                 variants=quantized_variants(spec.model, "vllm"))
        except (CapacityError, UsageError) as exc:
            if not req.force:
                raise
            out(f"warning: --force: starting although {exc.message}")
            return args
        for note in result.notes:
            out(f"{name}: {note}")
        estimate = result.estimate  # per GPU, on every GPU of every pod
        need = int(float(estimate["total_gib"]) * 1024) if estimate else None
        machine.reserve_memory(store, name, need)
        return list(result.args)


def _base_env(check: PodCheck, cached: bool) -> dict[str, str]:
    env = {"PATH": check.pre.path, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "DO_NOT_TRACK": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    if check.host.engine_env.get("venv"):
        env["VIRTUAL_ENV"] = str(check.host.engine_env["venv"])
    if check.pre.hf_home:
        env["HF_HOME"] = check.pre.hf_home
    if cached:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _wait_cluster(spec: ServiceSpec, run: Launch, head: ray_nodes.RayNode,
                  out: Output) -> None:
    """Every node joined the head and the cluster has the GPUs tp x pp needs."""
    check = run.checks[0]
    need = run.shape.tp * run.shape.pp
    end = time.monotonic() + CLUSTER_WAIT
    while True:
        view = ray_nodes.cluster(check.transport, check.ray or "ray", head.ip, head.ray_port,
                                 _base_env(check, run.cached))
        if view.nodes >= len(run.checks) and view.gpus >= need:
            break
        if time.monotonic() > end:
            raise EngineError(f"the Ray cluster has {view.nodes} of {len(run.checks)} nodes "
                              f"and {view.gpus:g} GPUs; tp x pp needs {need}",
                              hint=f"see the Ray logs: pi logs {spec.name} --node POD")
        time.sleep(2)
    out(f"{spec.name}: Ray cluster ready: {view.nodes} nodes, {view.gpus:g} GPUs")


def _vllm_runtime(store: Store, spec: ServiceSpec, run: Launch,
                  head: ray_nodes.RayNode) -> Runtime:
    """vLLM on the head: the Ray address, the key (stdin, 0600), the published URL."""
    check = run.checks[0]
    host = check.host
    env = {**_base_env(check, run.cached), **ray_nodes.address_env(head.ip),
           "RAY_ADDRESS": f"{head.ip}:{head.ray_port}"}
    engine = get_engine("vllm")
    url = endpoint_url(host, spec.port)
    full = spec.with_(extra={**spec.extra, "url": url, "served_model": engine.served_model(spec),
                             "bind": bind_address(spec, host),
                             "service_dir": service_dir(host, spec.name)})
    manifest = {"name": full.name, "host": host.name, "engine": "vllm", "model": full.model,
                "served_model": full.extra["served_model"], "port": full.port,
                "gpus": list(full.gpus), "url": url, "health_path": full.health_path,
                "multinode": run.pods}
    return runtime(store, full, transport=check.transport, host=host,
                   options=LaunchOptions(binary=check.pre.binary, env=env, manifest=manifest),
                   secrets=engine.secret_env_for(run.api_key))


def _failed(store: Store, spec: ServiceSpec, run: Launch, exc: BaseException) -> None:
    """After a failed or cancelled start: stop what ran on every pod, record the truth,
    raise (the original error, with what the cleanup could not confirm in its hint)."""
    name = spec.name
    cancelled = isinstance(exc, KeyboardInterrupt | Cancelled)
    reason = ("cancelled" if isinstance(exc, KeyboardInterrupt) else
              exc.message if isinstance(exc, GpumodError) else f"{type(exc).__name__}: {exc}")
    kept = ""
    try:
        machine.move(store, name, machine.Phase.STOPPING, note=f"start failed: {reason}")
        current = records.get_service(store, name)  # with the nodes' recorded pids
        _, done, why = mn_ops.stop_everywhere(store, current, run.started,
                                              vllm=run.vllm is not None, forget=True,
                                              timeout=10, keep_log=not cancelled)
    except KeyboardInterrupt:  # a second signal during the cleanup: the record stays
        done, why = [], {pod: EngineError("cleanup interrupted") for pod in run.started}
    except GpumodError as cleanup_exc:
        done, why = [], {pod: cleanup_exc for pod in run.started or [spec.host]}
    if why:
        never = [p for p in run.pods if p not in run.started]  # nothing of ours runs there
        problem = mn_ops.unconfirmed(store, spec, sorted({*done, *never}), why,
                                     what="clean up", reason=reason)
        kept = (f"vLLM or Ray may still run: the record of {name} is kept, `pi stop {name}` "
                f"finishes the cleanup ({problem.message})")
    else:
        with contextlib.suppress(GpumodError):
            machine.forget(store, name)
    store.log_event("start-failed", host=spec.host, service=name,
                    detail=reason + (f"; {kept}" if kept else ""))
    if cancelled:
        raise Cancelled("start cancelled; " + (kept or "vLLM and Ray were stopped on every "
                                               "pod and nothing recorded")) from None
    if isinstance(exc, GpumodError):
        if run.vllm is not None and isinstance(exc, EngineError) and not kept:
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + \
                f"vLLM's log: {run.vllm.plan.kept_log_path} on {spec.host}"
        if kept:
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + kept
    raise exc


def _record_node(store: Store, name: str, pod: str, pid: int) -> None:
    """Each Ray node's pid is recorded before it runs (the held launch's before_run)."""
    mn_ops.record_node(store, name, pod, pid)
