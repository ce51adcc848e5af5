"""Placement: which GPUs each service gets, and the engine memory settings that make it fit.

Pure functions: GPUs (total and used MiB, as nvidia-smi reports them) and
service requests in, a :class:`Placement` out. Capacity is counted in CUDA's
view of the card (nvidia-smi total minus the driver's reserve), because that
is what vLLM checks: at start, ``gpu_memory_utilization x total`` must be at
most the *free* memory, and the share is of the *whole* card, so a second
vLLM on a card gets a utilization equal to its own slice, not "0.9".
Services are started one at a time in the order given, each seeing the memory
its predecessors took.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gpumod.errors import CapacityError, UsageError
from gpumod.planner import estimate as est
from gpumod.planner.alternatives import Alternative, alternatives
from gpumod.planner.facts import ModelFacts
from gpumod.planner.gputable import cuda_total_mib

DEFAULT_MARGIN_MIB = 512


@dataclass(frozen=True)
class GPUState:
    index: int
    name: str
    total_mib: int           # nvidia-smi memory.total
    used_mib: int = 0        # in use now by processes that stay

    @property
    def capacity_mib(self) -> int:
        return cuda_total_mib(self.total_mib)


@dataclass(frozen=True)
class Neighbour:
    """A service already on a GPU (part of its used memory) that could sleep."""
    name: str
    gpus: tuple[int, ...]
    mib: int
    sleep_mode: str = "none"     # none | l1 | l2 | router
    weights_mib: int = 0         # freed by level-2 sleep in addition to the KV cache


@dataclass
class ServiceRequest:
    """One service to size: its engine, model facts and memory settings.

    The fields are the settings the planner may change (alternatives replace
    them); ``engine_args`` are the service's own engine args, read for every
    other flag that moves memory (dtype, quantization, batch limits), so a
    request sizes exactly as `gpumod model estimate` with the same args does.
    """

    name: str
    engine: str                                  # vllm | llamacpp | command | docker
    facts: ModelFacts | None = None
    tp: int = 1
    pp: int = 1                                  # pipeline stages (vLLM), on this host's GPUs
    context: int | None = None                   # vLLM --max-model-len / llama.cpp -c
    gpu_memory_utilization: float | None = None  # fixed share of the card (vLLM)
    kv_cache_memory_bytes: int | None = None     # fixed KV pool (vLLM)
    kv_cache_dtype: str = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_gpu_layers: int | None = None
    parallel: int = 1
    pinned_gpus: tuple[int, ...] = ()
    vram_mib: int | None = None                  # fixed budget (generic engines, or override)
    min_concurrency: float = 1.0
    sleep_mode: str = "none"
    version: str | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    variants: tuple[str, ...] = ()               # quantized variants known to the catalog
    calibration: dict[str, Any] | None = None
    engine_args: tuple[str, ...] = ()

    def label(self) -> str:
        return self.name


@dataclass
class Assignment:
    service: str
    engine: str
    gpus: tuple[int, ...]
    per_gpu_mib: int
    settings: dict[str, Any]          # engine memory settings, e.g. gpu_memory_utilization
    engine_args: list[str]            # the same as argv for the engine
    estimate: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass
class GPUFit:
    index: int
    name: str
    total_mib: int
    capacity_mib: int
    used_mib: int
    planned_mib: int
    free_after_mib: int
    margin_mib: int
    fits: bool
    services: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Placement:
    fits: bool
    assignments: list[Assignment]
    gpus: list[GPUFit]
    alternatives: list[Alternative] = field(default_factory=list)
    reason: str = ""
    unplaced: list[str] = field(default_factory=list)

    def assignment(self, service: str) -> Assignment | None:
        return next((a for a in self.assignments if a.service == service), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# Sizing one service on given GPUs
# ---------------------------------------------------------------------------

@dataclass
class _Sized:
    per_gpu_mib: int
    settings: dict[str, Any]
    args: list[str]
    estimate: dict[str, Any]
    notes: list[str]
    problem: str = ""


def vllm_args(req: ServiceRequest, util: float | None) -> est.VLLMArgs:
    """The request's vLLM flags: its engine args, with the planner's settings on top."""
    args = est.parse_vllm_args(list(req.engine_args))
    args.tp, args.pp = req.tp, req.pp
    args.gpu_memory_utilization = util
    args.max_model_len = req.context
    args.kv_cache_dtype = req.kv_cache_dtype
    args.kv_cache_memory_bytes = req.kv_cache_memory_bytes
    args.max_num_seqs = req.max_num_seqs or args.max_num_seqs
    args.enforce_eager = req.enforce_eager or args.enforce_eager
    args.version = req.version
    return args


def llamacpp_args(req: ServiceRequest) -> est.LlamaCppArgs:
    """The request's llama.cpp flags: its engine args, with the planner's settings on top."""
    args = est.parse_llamacpp_args(list(req.engine_args))
    args.ctx = req.context or args.ctx
    args.n_gpu_layers = 999 if req.n_gpu_layers is None else req.n_gpu_layers
    args.cache_type_k, args.cache_type_v = req.cache_type_k, req.cache_type_v
    args.parallel = req.parallel
    return args


def estimate_request(req: ServiceRequest, *, gpu_mib: int, gpu_name: str | None = None
                     ) -> est.VLLMEstimate | est.LlamaCppEstimate:
    """The estimate of `req` with its own settings (vLLM's default share when none is set).

    `gpumod model estimate` answers with this; placement sizes with the same
    arguments (see :func:`size_service`), so both give the same numbers.
    """
    if req.facts is None:
        raise UsageError(f"{req.name}: no model facts to estimate from")
    if req.engine == "vllm":
        return est.vllm_estimate(req.facts, gpu_mib=gpu_mib, gpu_name=gpu_name,
                                 args=vllm_args(req, req.gpu_memory_utilization),
                                 calibration=req.calibration)
    if req.engine == "llamacpp":
        return est.llamacpp_estimate(req.facts, gpu_mib=gpu_mib, args=llamacpp_args(req),
                                     calibration=req.calibration)
    raise UsageError(f"unknown engine {req.engine!r}", hint="use vllm or llamacpp")


def size_service(req: ServiceRequest, gpu_total_mib: int, free_mib: int,
                 grow_to_mib: int | None = None, gpu_name: str | None = None) -> _Sized:
    """Memory per GPU and engine settings for `req` when `free_mib` (CUDA view) is free.

    vLLM without a fixed utilization gets the smallest share that serves
    `min_concurrency` sequences of its context, grown up to `grow_to_mib` when given.
    """
    if req.engine == "vllm":
        if req.facts is None:
            raise UsageError(f"{req.name}: no model facts for a vLLM service")
        capacity = cuda_total_mib(gpu_total_mib)

        def estimate(util: float | None) -> est.VLLMEstimate:
            assert req.facts is not None
            return est.vllm_estimate(req.facts, gpu_mib=gpu_total_mib, gpu_name=gpu_name,
                                     args=vllm_args(req, util), calibration=req.calibration)

        if req.gpu_memory_utilization is not None or req.kv_cache_memory_bytes:
            e = estimate(req.gpu_memory_utilization)
            util = e.gpu_memory_utilization
        else:
            need = est.utilization_for(req.facts, gpu_mib=gpu_total_mib, gpu_name=gpu_name,
                                       args=vllm_args(req, None),
                                       sequences=max(1.0, req.min_concurrency),
                                       calibration=req.calibration)
            util = need
            if grow_to_mib is not None and need <= 1:
                base = estimate(need)
                overhead_mib = base.total_mib - base.requested_gib * 1024   # context, graphs
                grown = math.floor((grow_to_mib - overhead_mib) / capacity * 100) / 100
                util = max(need, min(grown, est.default_utilization(req.version)))
            e = estimate(min(util, 1.0))
        settings: dict[str, Any] = {"gpu_memory_utilization": round(e.gpu_memory_utilization, 2),
                                    "max_model_len": e.max_model_len,
                                    "tensor_parallel_size": req.tp}
        args = ["--gpu-memory-utilization", f"{e.gpu_memory_utilization:.2f}",
                "--max-model-len", str(e.max_model_len)]
        if req.kv_cache_memory_bytes:
            settings = {"kv_cache_memory_bytes": req.kv_cache_memory_bytes,
                        "max_model_len": e.max_model_len, "tensor_parallel_size": req.tp}
            args = ["--kv-cache-memory-bytes", str(req.kv_cache_memory_bytes),
                    "--max-model-len", str(e.max_model_len)]
        if req.tp > 1:
            args += ["--tensor-parallel-size", str(req.tp)]
        if req.pp > 1:
            settings["pipeline_parallel_size"] = req.pp
            args += ["--pipeline-parallel-size", str(req.pp)]
        if req.kv_cache_dtype != "auto":
            settings["kv_cache_dtype"] = req.kv_cache_dtype
            args += ["--kv-cache-dtype", req.kv_cache_dtype]
        problem = "; ".join(e.problems)
        if not problem and e.free_needed_gib * 1024 > free_mib:
            problem = (f"needs {e.free_needed_gib:.1f} GiB free at start, "
                       f"{free_mib / 1024:.1f} GiB free")
        return _Sized(e.total_mib, settings, args, e.to_json(), e.notes, problem)
    if req.engine == "llamacpp":
        if req.facts is None:
            raise UsageError(f"{req.name}: no model facts for a llama.cpp service")
        largs = llamacpp_args(req)
        e2 = est.llamacpp_estimate(req.facts, gpu_mib=gpu_total_mib, args=largs,
                                   calibration=req.calibration)
        ngl = "all" if largs.n_gpu_layers >= req.facts.num_layers else str(largs.n_gpu_layers)
        settings = {"ctx": largs.ctx, "n_gpu_layers": ngl, "cache_type_k": largs.cache_type_k,
                    "cache_type_v": largs.cache_type_v}
        args = ["-c", str(largs.ctx), "-ngl", str(999 if ngl == "all" else largs.n_gpu_layers),
                "-ctk", largs.cache_type_k, "-ctv", largs.cache_type_v]
        if largs.parallel > 1:
            args += ["-np", str(largs.parallel)]
        problem = "" if e2.total_mib <= free_mib else (
            f"needs {e2.total_gib:.1f} GiB, {free_mib / 1024:.1f} GiB free")
        return _Sized(e2.total_mib, settings, args, e2.to_json(), e2.notes, problem)
    # generic engines (or a model without facts): a declared budget, a share, or nothing
    if req.vram_mib:
        mib, notes = int(req.vram_mib), []
    elif req.gpu_memory_utilization:   # vLLM takes exactly this share of the card
        mib = math.ceil(req.gpu_memory_utilization * cuda_total_mib(gpu_total_mib))
        notes = [f"sized by its --gpu-memory-utilization {req.gpu_memory_utilization} "
                 "(no model facts)"]
    else:
        mib, notes = 0, ["no VRAM budget declared: counted as 0"]
    problem = "" if mib <= free_mib else f"needs {mib} MiB, {free_mib} MiB free"
    return _Sized(mib, {"vram_mib": mib}, [], {"total_gib": round(mib / 1024, 2)}, notes, problem)


# ---------------------------------------------------------------------------
# Placement of several services
# ---------------------------------------------------------------------------

def _candidate_sets(req: ServiceRequest, gpus: list[GPUState]) -> list[tuple[int, ...]]:
    indexes = [g.index for g in gpus]
    need = req.tp * req.pp if req.engine == "vllm" else req.tp
    if req.pinned_gpus:
        unknown = [i for i in req.pinned_gpus if i not in indexes]
        if unknown:
            raise UsageError(f"{req.name}: GPU {unknown[0]} does not exist on this host",
                             hint=f"GPUs here: {', '.join(map(str, indexes)) or 'none'}")
        if len(req.pinned_gpus) != need and req.engine == "vllm":
            raise UsageError(f"{req.name}: pinned to {len(req.pinned_gpus)} GPU(s) but "
                             f"it runs on {need} (tensor x pipeline parallel)")
        return [tuple(req.pinned_gpus)]
    if need > len(gpus):
        raise UsageError(f"{req.name}: tensor x pipeline parallel size {need} needs {need} GPUs, "
                         f"the host has {len(gpus)}",
                         hint=f"use tp {max(1, len(gpus))}, or a pod with more GPUs")
    return list(itertools.combinations(indexes, need))


def place(gpus: list[GPUState], requests: list[ServiceRequest], *,
          margin_mib: int = DEFAULT_MARGIN_MIB, neighbours: Sequence[Neighbour] = (),
          with_alternatives: bool = True) -> Placement:
    """Assign GPUs and memory settings to every request, in order; report per-GPU fit."""
    if not gpus:
        raise CapacityError("this host has no GPU", hint="`gpumod status` lists GPUs; "
                            "pick a pod with GPUs (--pod NAME)")
    by_index = {g.index: g for g in gpus}
    planned: dict[int, int] = {g.index: 0 for g in gpus}
    per_gpu_services: dict[int, list[tuple[str, int]]] = {g.index: [] for g in gpus}
    assignments: list[Assignment] = []
    unplaced: list[str] = []
    reasons: list[str] = []
    flexible: list[tuple[Assignment, ServiceRequest]] = []

    def free(i: int) -> int:
        g = by_index[i]
        return g.capacity_mib - g.used_mib - planned[i] - margin_mib

    for req in requests:
        best: tuple[int, tuple[int, ...], _Sized] | None = None
        failure = ""
        for combo in _candidate_sets(req, gpus):
            smallest = min((by_index[i] for i in combo), key=lambda g: g.total_mib)
            free_min = min(free(i) for i in combo)
            sized = size_service(req, smallest.total_mib, max(0, free_min),
                                 gpu_name=smallest.name)
            if sized.problem:
                failure = failure or sized.problem
                continue
            leftover = free_min - sized.per_gpu_mib
            if best is None or leftover < best[0]:      # best fit keeps big holes free
                best = (leftover, combo, sized)
        if best is None:
            unplaced.append(req.name)
            reasons.append(f"{req.name}: {failure or 'does not fit'}")
            # count it anyway on its pinned/first GPUs so the overflow shows
            width = req.tp * (req.pp if req.engine == "vllm" else 1)
            combo = req.pinned_gpus or tuple(sorted(planned, key=lambda i: free(i),
                                                    reverse=True)[:max(1, width)])
            smallest = min((by_index[i] for i in combo), key=lambda g: g.total_mib)
            sized = size_service(req, smallest.total_mib, 10**9, gpu_name=smallest.name)
            for i in combo:
                planned[i] += sized.per_gpu_mib
                per_gpu_services[i].append((req.name, sized.per_gpu_mib))
            assignments.append(Assignment(req.name, req.engine, tuple(combo), sized.per_gpu_mib,
                                          sized.settings, sized.args, sized.estimate,
                                          [*sized.notes, "does not fit"]))
            continue
        _, combo, sized = best
        for i in combo:
            planned[i] += sized.per_gpu_mib
            per_gpu_services[i].append((req.name, sized.per_gpu_mib))
        a = Assignment(req.name, req.engine, combo, sized.per_gpu_mib, sized.settings,
                       sized.args, sized.estimate, sized.notes)
        assignments.append(a)
        if req.engine == "vllm" and req.gpu_memory_utilization is None \
                and not req.kv_cache_memory_bytes:
            flexible.append((a, req))

    # Grow flexible vLLM services into the memory left on their GPUs (fair shares).
    if not unplaced:
        for a, req in flexible:
            share = min(free(i) // max(1, sum(1 for b, _ in flexible if i in b.gpus))
                        for i in a.gpus)
            if share <= 0:
                continue
            smallest = min((by_index[i] for i in a.gpus), key=lambda g: g.total_mib)
            grown = size_service(req, smallest.total_mib, a.per_gpu_mib + share,
                                 grow_to_mib=a.per_gpu_mib + share, gpu_name=smallest.name)
            if grown.problem or grown.per_gpu_mib <= a.per_gpu_mib:
                continue
            for i in a.gpus:
                planned[i] += grown.per_gpu_mib - a.per_gpu_mib
                per_gpu_services[i] = [(n, grown.per_gpu_mib if n == a.service else m)
                                       for n, m in per_gpu_services[i]]
            a.per_gpu_mib, a.settings, a.engine_args = (grown.per_gpu_mib, grown.settings,
                                                        grown.args)
            a.estimate, a.notes = grown.estimate, grown.notes

    fits_list = []
    for g in gpus:
        after = g.capacity_mib - g.used_mib - planned[g.index]
        fits_list.append(GPUFit(g.index, g.name, g.total_mib, g.capacity_mib, g.used_mib,
                                planned[g.index], after, margin_mib, after >= margin_mib,
                                per_gpu_services[g.index]))
    ok = not unplaced and all(f.fits for f in fits_list)
    placement = Placement(ok, assignments, fits_list, reason="; ".join(reasons), unplaced=unplaced)
    if not ok and with_alternatives:
        placement.alternatives = alternatives(gpus, requests, placement, place=place,
                                              margin_mib=margin_mib, neighbours=list(neighbours))
    return placement


# ---------------------------------------------------------------------------
# Entry point for `pi start`
# ---------------------------------------------------------------------------

def gpu_states(usages: list[Any]) -> list[GPUState]:
    """GPUState list from gpumod.hosts.gpus.GPUUsage rows (nvidia-smi)."""
    states = []
    for u in usages:
        total = int(u.gpu.memory_mib)
        used = u.used_mib
        if used is None and u.free_mib is not None:
            used = total - int(u.free_mib)
        states.append(GPUState(u.gpu.index, u.gpu.name, total, int(used or 0)))
    return states


def plan_start(gpus_usage: list[Any], request: ServiceRequest, *,
               margin_mib: int = DEFAULT_MARGIN_MIB,
               neighbours: Sequence[Neighbour] = ()) -> Placement:
    """Place one service on a host as it is now (nvidia-smi), or raise CapacityError.

    The error's message says why; its hint lists the ranked alternatives.
    """
    gpus = gpu_states(gpus_usage)
    placement = place(gpus, [request], margin_mib=margin_mib, neighbours=neighbours)
    if placement.fits:
        return placement
    fit = [f for f in placement.gpus if f.services]
    worst = min(fit or placement.gpus, key=lambda f: f.free_after_mib)
    short = -worst.free_after_mib + worst.margin_mib
    reason = placement.reason or (f"GPU {worst.index} would be short of "
                                  f"{short / 1024:.1f} GiB")
    hint = "; ".join(f"[{a.rank}] {a.description}" for a in placement.alternatives[:5])
    raise CapacityError(f"{request.name} does not fit: {reason}",
                        hint=(("alternatives: " + hint) if hint else
                              "free a GPU (`pi stop NAME`) or use a bigger pod") +
                        "; --force starts it anyway")
