"""`pi start MODEL --name N --pods dc1,dc2[,...]`: one model across pods on Ray.

As vLLM documents multi-node serving (tensor parallel inside a node, pipeline parallel
across nodes, the Ray executor), with everything a one-pod start does:

1. locally: the name, the pods (two or more, distinct, each set up), the engine args (the
   catalog's multi-node configuration, or yours after --vllm, or tp x pp alone);
2. every pod at once: the one-pod pre-flight (vLLM, the model in the cache, curl or
   python3, listening ports) and Ray on the engine's PATH; a missing model is downloaded
   on each pod that lacks it (every node loads its own weights);
3. the network (:mod:`gpumod.ops.netcheck`): one private address per pod, measured in both
   directions, or a refusal (Ray's traffic is unauthenticated and unencrypted);
4. the model's facts for the planner (none: no VRAM check, as a one-pod start);
5. the launch under the lifecycle (:mod:`gpumod.ops.multinode_launch`): ONE record on the
   head pod, 'starting', before anything runs; admission on every pod's live figures
   (``--gpu-memory-utilization`` computed for tp x pp, or a refusal with alternatives;
   ``--force`` overrides); the Ray head, the Ray workers, a cluster check, and ``vllm
   serve ... --distributed-executor-backend ray`` on the head with the API key (stdin,
   0600 file), each pid recorded before its process runs; health awaited on the head
   while its log streams. Only the head's port is published.

A failure or Ctrl+C (SIGTERM, SIGHUP) after the record stops vLLM and every Ray node
started; the record goes once that is confirmed everywhere, else it stays 'stopping'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpumod import validate
from gpumod.catalog.models import Selection, find_model, select_multinode
from gpumod.engines.base import flag_value, parse_context, parse_memory, replace_flag
from gpumod.engines.registry import get_engine
from gpumod.errors import (
    CapacityError,
    ConflictError,
    EngineError,
    GpumodError,
    NotFoundError,
    UsageError,
)
from gpumod.hosts.model import Host
from gpumod.hosts.transports.base import Transport
from gpumod.ops import hosts as hosts_ops
from gpumod.ops import inventory, netcheck, ray_nodes
from gpumod.ops import multinode as mn_ops
from gpumod.ops import services as records
from gpumod.ops.deploy import DEFAULT_DEADLINE, StartResult, download
from gpumod.ops.gateway_routes import claim_aliases
from gpumod.ops.idle import gateway_extra
from gpumod.ops.multinode_launch import Launch, launch
from gpumod.ops.preflight import Preflight, _engine_path_prefix, preflight
from gpumod.ops.startplan import (
    StartPlan,
    StartRequest,
    api_key_from_env,
    mask,
    model_kind,
    validate_model,
)
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.store.db import Store

Output = Callable[[str], None]
TP = ("--tensor-parallel-size", "-tp")
PP = ("--pipeline-parallel-size", "-pp")
BACKEND = ("--distributed-executor-backend",)

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
    pre: Preflight
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


def plan_shape(req: StartRequest, hosts: list[Host]) -> Shape:
    """Engine args and tp x pp for `hosts` (pure: unit-tested)."""
    engine = get_engine("vllm")
    per_node = min(len(h.gpus) for h in hosts)
    warnings: list[str] = []
    if len({len(h.gpus) for h in hosts}) > 1:
        warnings.append(f"the pods have different GPU counts: {per_node} per pod are used")
    if len({h.gpus[0].name for h in hosts}) > 1:
        warnings.append("the pods have different GPU types: the smallest card sizes the "
                        "deployment")
    known = find_model(req.model) if model_kind("vllm", req.model) == "hf" else None
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


def _check_pods(store: Store, req: StartRequest, pods: list[str]) -> list[Host]:
    if any(len(p.split()) > 1 for p in pods):
        raise UsageError(f"--pods {','.join(pods)!r}: pod names are separated by commas",
                         hint="e.g. --pods dc1,dc2 (the first is the head)")
    if len(pods) < 2:
        raise UsageError("--pods needs two or more pods", hint="for one pod use --pod NAME")
    if len(set(pods)) != len(pods):
        raise UsageError(f"--pods names a pod twice: {','.join(pods)}",
                         hint="name each pod once, the head first: --pods dc1,dc2")
    if req.pod:  # what was typed is checked before any pod is looked up
        raise UsageError("--pod and --pods exclude each other",
                         hint="--pods HEAD,WORKER... for one model across pods; --pod for one")
    if req.engine not in (None, "vllm"):
        raise UsageError("multi-node deployments run vLLM", hint="leave --engine out")
    if req.gpus is not None:
        raise UsageError("--gpus does not apply with --pods",
                         hint="every GPU of each pod is used (tp = GPUs per pod)")
    hosts = [hosts_ops.get_host(store, p) for p in pods]
    for host in hosts:
        if host.is_local:
            raise UsageError("multi-node runs on pods, not on this machine",
                             hint="give pods set up with `pi pods setup`")
    return hosts


def _pod_check(host: Host, plan: StartPlan) -> PodCheck:
    transport = hosts_ops.transport_for(host)
    pre = preflight(transport, host, plan)
    result = transport.run_script(RAY_CHECK, [_engine_path_prefix(host)], timeout=60)
    result.check(f"{transport.label}: checking Ray")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return PodCheck(host, transport, pre, found.get("ray"), found.get("python"),
                    netcheck.parse_discovery(result.stdout))


def _parallel(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def _facts(store: Store, req: StartRequest, out: Output) -> Any:
    """The model's facts for the planner, or None (then nothing is checked, with a note)."""
    from gpumod.ops.facts import model_facts

    try:
        return model_facts(store, req.model)
    except GpumodError as exc:
        out(f"{req.name}: no VRAM check: no facts for {req.model}: {exc.message}")
    except Exception as exc:  # facts are a help, never a reason not to start (as admission)
        out(f"{req.name}: no VRAM check: no facts for {req.model}: {type(exc).__name__}: {exc}")
    return None


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


def start(store: Store, req: StartRequest, pods: list[str], *,
          out: Output = lambda s: None, log: Output = lambda s: None) -> StartResult:
    """Start one model across `pods` (the head first); see the module docstring."""
    began = time.monotonic()
    api_key = api_key_from_env()
    validate.name(req.name, "service name")
    if req.port is not None:
        validate.port(req.port)
    if req.idle_ttl is not None:  # a rest the gateway could not undo: only --pods starts it
        raise UsageError("--idle-ttl does not go with --pods: a deployment across pods is "
                         "started only by `pi start --pods`, so nothing could bring it back",
                         hint="drop --idle-ttl; `pi stop` it when it is no longer needed")
    gateway = gateway_extra(None, req.aliases)  # the gateway routes to it while it runs
    validate_model(req.model)
    hf = model_kind("vllm", req.model) == "hf"
    if hf and ":" in req.model:
        raise UsageError(f"invalid model {req.model!r}",
                         hint="OWNER/REPO:FILE is for GGUF files with llama.cpp, on one pod")
    hosts = _check_pods(store, req, pods)
    existing = services_table.get(store, req.name)
    if existing is not None:
        raise ConflictError(f"a service named {req.name!r} already exists (on {existing.host})",
                            hint=f"pick another --name, or `pi stop {req.name}` first")
    claim_aliases(store, hosts[0].name, req.name, req.model, gateway)
    if all(h.gpus for h in hosts):  # the arguments checked before any pod is asked
        plan_shape(req, hosts)
    hf_repo = req.model if hf else None
    out(f"checking {', '.join(pods)} (vLLM, Ray, the model, GPUs, network)")
    probe = StartPlan(engine=get_engine("vllm"), model=req.model, hf_repo=hf_repo,
                      gguf_file=None, args=[], env={}, gpu_count=0, known=None, selection=None)
    checks: list[PodCheck] = _parallel(lambda h: _pod_check(h, probe), hosts)
    for c in checks:  # the GPUs each pod has now (its nvidia-smi, read by the pre-flight)
        c.host = inventory.read(store, c.host, usage=c.pre.usage).host
        if not c.host.gpus:
            raise CapacityError(f"pod {c.host.name} has no GPU (nvidia-smi lists none there)",
                                hint="every pod of a multi-node deployment needs GPUs")
    shape = plan_shape(req, [c.host for c in checks])
    validate.no_secret_in([req.model, shape.args, shape.env],
                          [api_key, os.environ.get("HF_TOKEN")],
                          "engine's arguments or environment")
    for warning in shape.warnings:
        out(f"warning: {warning}")
    plan = StartPlan(engine=get_engine("vllm"), model=req.model, hf_repo=hf_repo,
                     gguf_file=None, args=shape.args, env=shape.env,
                     gpu_count=shape.gpus_per_node,
                     known=shape.selection.model if shape.selection else None,
                     selection=shape.selection)
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
            download(c.transport, c.host, plan, c.pre, req.name, out)
    addresses = netcheck.choose_addresses({c.host.name: c.net for c in checks}, pods[0])
    netcheck.probe_reachability(
        {c.host.name: c.transport for c in checks}, addresses,
        python={c.host.name: ["env", f"PATH={c.pre.path}", c.python or "python3"]
                for c in checks})
    out("network: " + ", ".join(f"{p} {a}" for p, a in addresses.items())
        + " (private; reachable both ways)")
    facts = _facts(store, req, out)
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
    draft = ServiceSpec(
        name=req.name, host=head.host.name, engine="vllm", model=req.model, port=0,
        args=tuple(shape.args), env=dict(shape.env), gpus=tuple(range(shape.gpus_per_node)),
        health_path=req.health_path or "/health",
        extra={"origin": records.ORIGIN_START, "support": plan.support,
               **({"vllm_version": req.vllm_version} if req.vllm_version else {}),
               "catalog": shape.selection.model.id if shape.selection else None,
               "config": shape.selection.config.label() if shape.selection else None,
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               mn_ops.KEY: record, **gateway})
    run = Launch(checks, shape, facts, api_key, cached=bool(hf_repo),
                 deadline=req.deadline or DEFAULT_DEADLINE["vllm"])
    done = launch(store, draft, run, req, listening=head.pre.listening | {ray_port, dashboard},
                  out=out, log=log)
    notes = shape.selection.notes if shape.selection else ""
    return StartResult(done, str(done.extra["url"]), str(done.extra["served_model"]),
                       mask(api_key), plan.support, notes, shape.warnings,
                       time.monotonic() - began)
