"""`pi start MODEL --name N --pods dc1,dc2[,...]`: one model across pods on Ray.

As vLLM documents multi-node serving (tensor parallel inside a node, pipeline parallel
across nodes, the Ray executor), with everything a one-pod start does:

1. locally: the name, the pods (two or more, distinct, each set up), the engine args (the
   catalog's multi-node configuration, or yours after --vllm, or tp x pp alone);
2. every pod at once: the one-pod pre-flight (vLLM, the model in the cache, curl or
   python3, live GPU figures) and Ray on the engine's PATH; a missing model is downloaded
   on each pod that lacks it (every node loads its own weights);
3. the network (:mod:`gpumod.ops.netcheck`): one private address per pod, measured in both
   directions, or a refusal (Ray's traffic is unauthenticated and unencrypted);
4. the planner (:mod:`gpumod.planner.multinode`): per-GPU weights and KV cache for tp x pp
   on the smallest, fullest GPU of all pods, ``--gpu-memory-utilization`` computed, or a
   refusal with alternatives (``--force`` overrides);
5. ONE record on the head pod (port picked and reserved there), then the Ray head, the
   Ray workers, a cluster check (every node joined, enough GPUs), and ``vllm serve ...
   --distributed-executor-backend ray`` on the head with the API key (stdin, 0600 file),
   health awaited on the head while its log streams. Only the head's port is published.

Any failure or Ctrl+C after the reservation stops vLLM and every Ray node started so far
and removes the record: nothing half-started stays behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod import validate
from gpumod.catalog.models import Selection, find_model, select_multinode
from gpumod.engines.base import flag_value, get_engine, parse_context, parse_memory, replace_flag
from gpumod.errors import (
    Cancelled,
    CapacityError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import deploy, netcheck, ray_nodes
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import launch as launcher
from gpumod.ops import multinode as mn_ops
from gpumod.ops import services as records
from gpumod.ops.endpoints import endpoint_url
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

Output = Callable[[str], None]
TP = ("--tensor-parallel-size", "-tp")
PP = ("--pipeline-parallel-size", "-pp")
BACKEND = ("--distributed-executor-backend",)
CLUSTER_WAIT = 90.0

RAY_CHECK = r"""
prefix=$1
if [ -n "$prefix" ]; then PATH="$prefix:$PATH"; export PATH; fi
r=$(command -v ray 2>/dev/null) && echo "ray=$r"
p=$(command -v python3 2>/dev/null) && echo "python=$p"
""" + netcheck.DISCOVER_SCRIPT


@dataclass
class PodCheck:
    host: Host
    transport: Transport
    pre: deploy.Preflight
    ray: str | None
    python: str | None
    net: netcheck.PodNet


@dataclass
class Shape:
    args: list[str]
    env: dict[str, str]
    tp: int
    pp: int
    gpus_per_node: int
    selection: Selection | None
    warnings: list[str] = field(default_factory=list)


def plan_shape(req: deploy.StartRequest, hosts: list[Host]) -> Shape:
    """Engine args and tp x pp for `hosts` (pure: unit-tested)."""
    engine = get_engine("vllm")
    per_node = min(len(h.gpus) for h in hosts)
    warnings: list[str] = []
    if len({len(h.gpus) for h in hosts}) > 1:
        warnings.append(f"the pods have different GPU counts: {per_node} per pod are used")
    if len({h.gpus[0].name for h in hosts}) > 1:
        warnings.append("the pods have different GPU types: the smallest card sizes the "
                        "deployment")
    known = find_model(req.model) if deploy.model_kind("vllm", req.model) == "hf" else None
    selection: Selection | None = None
    env: dict[str, str] = {}
    if req.custom_args:
        args = list(req.custom_args)
    elif known is not None and known.engine == "vllm":
        selection = select_multinode(known, len(hosts), hosts[0].gpus[:per_node])
        if selection is None:
            warnings.append(f"{known.name}: no catalog configuration for {len(hosts)} pods x "
                            f"{per_node} GPUs; starting with tp x pp only")
            args = []
        else:
            args, env = list(selection.config.args), dict(selection.config.env)
    else:
        args = []
    if not req.custom_args:
        if req.memory is not None:
            args = engine.apply_memory(args, parse_memory(req.memory))
        if req.context is not None:
            args = engine.apply_context(args, parse_context(req.context))
    backend = flag_value(args, BACKEND)
    if backend not in (None, "ray"):
        raise UsageError(f"--distributed-executor-backend {backend} cannot span pods here",
                         hint="gpumod runs multi-node vLLM on Ray: leave the flag out")
    tp_text, pp_text = flag_value(args, TP), flag_value(args, PP)
    try:
        tp = int(tp_text) if tp_text else per_node
        pp = int(pp_text) if pp_text else len(hosts)
    except ValueError:
        raise UsageError("--tensor-parallel-size and --pipeline-parallel-size take whole "
                         "numbers") from None
    if tp < 1 or pp < 1 or tp * pp > per_node * len(hosts):
        raise UsageError(f"tp {tp} x pp {pp} = {tp * pp} GPUs, but the {len(hosts)} pods have "
                         f"{per_node * len(hosts)} ({per_node} each)",
                         hint=f"use --tensor-parallel-size {per_node} "
                              f"--pipeline-parallel-size {len(hosts)}")
    args = replace_flag(replace_flag(replace_flag(args, TP, str(tp)), PP, str(pp)), BACKEND,
                        "ray")
    return Shape(args, env, tp, pp, per_node, selection, warnings)


def _check_pods(store: Store, req: deploy.StartRequest, pods: list[str]) -> list[Host]:
    if len(pods) < 2:
        raise UsageError("--pods needs two or more pods", hint="for one pod use --pod NAME")
    if len(set(pods)) != len(pods):
        raise UsageError(f"--pods names a pod twice: {','.join(pods)}")
    hosts = [hosts_ops.get_host(store, p) for p in pods]
    for host in hosts:
        if host.is_local:
            raise UsageError("multi-node runs on pods, not on this machine",
                             hint="give pods set up with `pi pods setup`")
        if not host.gpus:
            raise CapacityError(f"pod {host.name} has no GPU recorded",
                                hint=f"re-run `pi pods setup {host.name} ...`")
    if req.engine not in (None, "vllm"):
        raise UsageError("multi-node deployments run vLLM", hint="leave --engine out")
    if req.gpus is not None:
        raise UsageError("--gpus does not apply with --pods",
                         hint="every GPU of each pod is used (tp = GPUs per pod)")
    if req.pod:
        raise UsageError("--pod and --pods exclude each other")
    return hosts


def _pod_check(host: Host, plan: deploy.StartPlan) -> PodCheck:
    transport = hosts_ops.transport_for(host)
    pre = deploy.preflight(transport, host, plan)
    result = transport.run_script(RAY_CHECK, [deploy._engine_path_prefix(host)], timeout=60)
    result.check(f"{transport.label}: checking Ray")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return PodCheck(host, transport, pre, found.get("ray"), found.get("python"),
                    netcheck.parse_discovery(result.stdout))


def _parallel(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def _size(store: Store, req: deploy.StartRequest, shape: Shape, checks: list[PodCheck],
          out: Output) -> list[str]:
    """The planner's verdict: engine args to use (raises CapacityError unless --force)."""
    from gpumod.planner import multinode as sizing
    from gpumod.planner.admission import quantized_variants
    from gpumod.planner.facts import resolve

    if any(c.pre.usage is None for c in checks):
        out(f"{req.name}: no VRAM check: nvidia-smi answered nothing on a pod")
        return shape.args
    try:
        facts = resolve(req.model, store=store)
    except GpumodError as exc:
        out(f"{req.name}: no VRAM check: no facts for {req.model}: {exc.message}")
        return shape.args
    except Exception as exc:  # facts are a help, never a reason not to start (as admission)
        out(f"{req.name}: no VRAM check: no facts for {req.model}: {type(exc).__name__}: {exc}")
        return shape.args
    nodes = [sizing.NodeGPUs(c.host.name,
                             [u.gpu.memory_mib for u in c.pre.usage or []],
                             [u.free_mib if u.free_mib is not None else u.gpu.memory_mib
                              for u in c.pre.usage or []]) for c in checks]
    version = str(checks[0].host.engine_env.get("vllm_version") or "") or None
    try:
        result = sizing.size(facts, model=req.model, tp=shape.tp, pp=shape.pp, nodes=nodes,
                             engine_args=tuple(shape.args), version=version,
                             variants=quantized_variants(req.model, "vllm"))
    except (CapacityError, UsageError) as exc:
        if not req.force:
            raise
        out(f"warning: --force: starting although {exc.message}")
        return shape.args
    for note in result.notes:
        out(f"{req.name}: {note}")
    return list(result.args)


def _ports(checks: list[PodCheck]) -> tuple[int, int, dict[str, int]]:
    head = checks[0]
    ray_port = ray_nodes.pick_port(ray_nodes.DEFAULT_RAY_PORT, head.pre.listening)
    dashboard = ray_nodes.pick_port(ray_nodes.DEFAULT_DASHBOARD_PORT,
                                    head.pre.listening | {ray_port})
    taken = {ray_port, dashboard}
    agents: dict[str, int] = {}
    for c in checks:  # distinct across pods too: pods may share a machine (a test rig)
        port = ray_nodes.pick_port(ray_nodes.DEFAULT_AGENT_PORT, c.pre.listening | taken)
        agents[c.host.name] = port
        taken.add(port)
    return ray_port, dashboard, agents


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


def start(store: Store, req: deploy.StartRequest, pods: list[str], *,
          out: Output = lambda s: None, log: Output = lambda s: None) -> deploy.StartResult:
    """Start one model across `pods` (the head first); see the module docstring."""
    began = time.monotonic()
    api_key = deploy.api_key_from_env()
    validate.name(req.name, "service name")
    if req.port is not None:
        validate.port(req.port)
    deploy.validate_model(req.model)
    if deploy.model_kind("vllm", req.model) == "hf" and ":" in req.model:
        raise UsageError(f"invalid model {req.model!r}",
                         hint="OWNER/REPO:FILE is for GGUF files with llama.cpp, on one pod")
    hosts = _check_pods(store, req, pods)
    if store.query_one("SELECT 1 FROM services WHERE name = ?", (req.name,)):
        existing = records.get_service(store, req.name)
        raise ConflictError(f"a service named {req.name!r} already exists (on {existing.host})",
                            hint=f"pick another --name, or `pi stop {req.name}` first")
    shape = plan_shape(req, hosts)
    for warning in shape.warnings:
        out(f"warning: {warning}")
    hf_repo = req.model if deploy.model_kind("vllm", req.model) == "hf" else None
    plan = deploy.StartPlan(engine=get_engine("vllm"), model=req.model, hf_repo=hf_repo,
                            gguf_file=None, args=shape.args, env=shape.env,
                            gpu_count=shape.gpus_per_node,
                            known=shape.selection.model if shape.selection else None,
                            selection=shape.selection)
    out(f"checking {', '.join(pods)} (vLLM, Ray, the model, GPUs, network)")
    checks: list[PodCheck] = _parallel(lambda h: _pod_check(h, plan), hosts)
    for c in checks:  # Ray is told the GPUs nvidia-smi shows, never more
        if c.pre.usage is not None and len(c.pre.usage) < shape.gpus_per_node:
            raise CapacityError(f"pod {c.host.name}: nvidia-smi shows {len(c.pre.usage)} "
                                f"GPU(s), {shape.gpus_per_node} are needed per pod",
                                hint=f"re-run `pi pods setup {c.host.name} ...` to record its "
                                     "GPUs")
    missing_ray = [c.host.name for c in checks if not c.ray]
    if missing_ray:
        raise EngineError(f"Ray is not installed on {', '.join(missing_ray)}",
                          hint=f"run `pi pods setup {missing_ray[0]} \"ssh ...\" --ray` "
                               f"(installs {ray_nodes.RAY_REQUIREMENT}, the Ray vLLM pins)")
    for c in checks:
        if hf_repo and not (c.pre.model_path or c.pre.cached):
            if not req.download:
                raise NotFoundError(f"{hf_repo} is not in the Hugging Face cache on pod "
                                    f"{c.host.name}", hint="drop --no-download to fetch it")
            deploy.download(c.transport, c.host, plan, c.pre, req.name, out)
    addresses = netcheck.choose_addresses({c.host.name: c.net for c in checks}, pods[0])
    netcheck.probe_reachability(
        {c.host.name: c.transport for c in checks}, addresses,
        python={c.host.name: ["env", f"PATH={c.pre.path}", c.python or "python3"]
                for c in checks})
    out("network: " + ", ".join(f"{p} {a}" for p, a in addresses.items())
        + " (private; reachable both ways)")
    args = _size(store, req, shape, checks, out)
    ray_port, dashboard, agents = _ports(checks)
    head = checks[0]
    record = {"pods": list(pods), "tp": shape.tp, "pp": shape.pp,
              "gpus_per_node": shape.gpus_per_node, "ray_port": ray_port,
              "dashboard_port": dashboard,
              "nodes": {c.host.name: {"ip": addresses[c.host.name],
                                      "role": "head" if i == 0 else "worker",
                                      "gpus": shape.gpus_per_node,
                                      "agent_port": agents[c.host.name]}
                        for i, c in enumerate(checks)}}
    support = "possibly works" if shape.selection is None else (
        "supported" if shape.selection.type_matched else
        "supported (config written for another GPU type)")
    draft = ServiceSpec(
        name=req.name, host=head.host.name, engine="vllm", model=req.model, port=0,
        args=tuple(args), env=dict(shape.env),
        health_path=req.health_path or "/health",
        extra={"origin": records.ORIGIN_START, "support": support,
               "catalog": shape.selection.model.id if shape.selection else None,
               "config": shape.selection.config.label() if shape.selection else None,
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               mn_ops.KEY: record})
    reserved = records.reserve(store, draft, head.host, gpu_count=shape.gpus_per_node,
                               listening=head.pre.listening | {ray_port, dashboard},
                               port=req.port)
    started: list[str] = []
    try:
        done = _launch(store, reserved, checks, api_key, started, bool(hf_repo), req, out, log)
    except BaseException as exc:
        cleanup = _undo(store, reserved, started)
        records.drop(store, req.name)
        store.log_event("start-failed", host=head.host.name, service=req.name, detail=str(exc))
        if isinstance(exc, KeyboardInterrupt):
            raise Cancelled("start cancelled; vLLM and Ray were stopped and nothing recorded"
                            + (f" (cleanup: {cleanup})" if cleanup else "")) from None
        if cleanup and isinstance(exc, GpumodError):
            exc.hint = ((exc.hint + "; ") if exc.hint else "") + f"cleanup: {cleanup}"
        raise
    notes = shape.selection.notes if shape.selection else ""
    return deploy.StartResult(done, str(done.extra["url"]), str(done.extra["served_model"]),
                              deploy.mask(api_key), support, notes, shape.warnings,
                              time.monotonic() - began)


def _launch(store: Store, spec: ServiceSpec, checks: list[PodCheck], api_key: str,
            started: list[str], cached: bool, req: deploy.StartRequest, out: Output,
            log: Output) -> ServiceSpec:
    """Ray head, workers, cluster check, vLLM on the head, health; the finished record."""
    head = checks[0]
    nodes = {c.host.name: replace(mn_ops.ray_node(spec, c.host.name), binary=c.ray or "ray")
             for c in checks}
    out(f"{spec.name}: starting the Ray head on {head.host.name} "
        f"({nodes[head.host.name].ip}:{nodes[head.host.name].ray_port})")
    started.append(head.host.name)
    ray_nodes.start(head.transport, head.host, nodes[head.host.name],
                    _base_env(head, cached))
    workers = checks[1:]
    out(f"{spec.name}: starting Ray workers on {', '.join(c.host.name for c in workers)}")
    started.extend(c.host.name for c in workers)
    _parallel(lambda c: ray_nodes.start(c.transport, c.host, nodes[c.host.name],
                                        _base_env(c, cached)), workers)
    mn = mn_ops.record(spec)
    need = mn["tp"] * mn["pp"]
    end = time.monotonic() + CLUSTER_WAIT
    while True:
        view = ray_nodes.cluster(head.transport, head.ray or "ray", nodes[head.host.name].ip,
                                 mn["ray_port"], _base_env(head, cached))
        if view.nodes >= len(checks) and view.gpus >= need:
            break
        if time.monotonic() > end:
            raise EngineError(f"the Ray cluster has {view.nodes} of {len(checks)} nodes and "
                              f"{view.gpus:g} GPUs; tp x pp needs {need}",
                              hint="see the Ray logs: pi logs NAME --node POD")
        time.sleep(2)
    out(f"{spec.name}: Ray cluster ready: {view.nodes} nodes, {view.gpus:g} GPUs")
    host = head.host
    env = {**_base_env(head, cached), **ray_nodes.address_env(nodes[host.name].ip),
           "RAY_ADDRESS": f"{nodes[host.name].ip}:{mn['ray_port']}"}
    engine = get_engine("vllm")
    url = endpoint_url(host, spec.port)
    full = spec.with_(extra={**spec.extra, "url": url, "served_model": engine.served_model(spec),
                             "bind": launcher.bind_address(spec, host),
                             "service_dir": launcher.service_dir(host, spec.name)})
    manifest = {"name": full.name, "host": host.name, "engine": "vllm", "model": full.model,
                "served_model": full.extra["served_model"], "port": full.port,
                "gpus": list(full.gpus), "url": url, "health_path": full.health_path,
                "multinode": mn["pods"]}
    rt = launcher.runtime(store, full, transport=head.transport, host=host,
                          options=launcher.LaunchOptions(binary=head.pre.binary, env=env,
                                                         manifest=manifest),
                          secrets=engine.secret_env_for(api_key))
    out(f"{spec.name}: starting vLLM on {host.name} (port {spec.port}, tp {mn['tp']} x "
        f"pp {mn['pp']}, Ray)")
    pid = rt.supervisor.start(rt.plan, rt.secrets)
    took = launcher.wait_healthy(rt, pid, req.deadline or deploy.DEFAULT_DEADLINE["vllm"], log)
    done = records.finish(store, full.with_(
        pid=pid, env=dict(rt.plan.env),
        extra={**full.extra, "pid": pid, "argv": list(rt.plan.argv)}))
    store.log_event("started", host=host.name, service=spec.name,
                    detail=f"vllm {spec.model} on {', '.join(mn['pods'])} (tp {mn['tp']} x "
                           f"pp {mn['pp']}), port {spec.port}, healthy after {took:.1f}s")
    out(f"{spec.name}: healthy after {took:.1f}s")
    return done


def _undo(store: Store, spec: ServiceSpec, started: list[str]) -> str:
    """Stop what a failed start left: vLLM on the head, the Ray nodes started."""
    problems: list[str] = []
    try:
        launcher.runtime(store, spec, secrets={}).stop(timeout=10, forget=True)
    except GpumodError as exc:
        problems.append(f"vLLM: {exc.message}")
    _, failed = mn_ops.stop_nodes(store, spec, started)
    problems += [f"{pod}: {exc.message}" for pod, exc in failed.items()]
    return "; ".join(problems)

