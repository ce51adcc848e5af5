"""Admission: may this service start on its GPUs now, and with which memory settings?

The start path (``gpumod.ops.sizing.check_start``) calls :func:`precheck` and
:func:`admit` once the GPUs are picked and before the engine is launched, with
the live nvidia-smi figures and the request ``ops.sizing`` built (model facts,
engine version, the latest calibration for the same setup, catalog variants).
:func:`admit` places the service with :func:`gpumod.planner.placement.place`, and either

- admits it, with the engine's memory settings filled in where the user set
  none (vLLM: ``--gpu-memory-utilization`` as a share of the *whole* card that
  fits the memory free *now*; llama.cpp: ``-c``, ``-ngl``, ``-ctk``/``-ctv``),
- or raises :class:`CapacityError` with the numbers and ranked alternatives
  (admitting anyway, with a warning, under ``--force``).

When the facts cannot be had (offline, unknown model, a path on a pod) or the
host has no nvidia-smi, nothing is checked and the start goes on with a note.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod.errors import CapacityError, GpumodError, UsageError
from gpumod.planner import estimate as est
from gpumod.planner.alternatives import Alternative
from gpumod.planner.facts import ModelFacts
from gpumod.planner.gputable import GIB, cuda_total_mib
from gpumod.planner.placement import (
    DEFAULT_MARGIN_MIB,
    GPUState,
    Placement,
    ServiceRequest,
    llamacpp_args,
    place,
    vllm_args,
)

VLLM_UTIL = ("--gpu-memory-utilization",)
VLLM_KV_BYTES = ("--kv-cache-memory-bytes", "--kv-cache-memory")
VLLM_DP = ("--data-parallel-size", "-dp")
LLAMA_CTX = ("-c", "--ctx-size")
LLAMA_NGL = ("-ngl", "--gpu-layers", "--n-gpu-layers")
LLAMA_CTK = ("-ctk", "--cache-type-k")
LLAMA_CTV = ("-ctv", "--cache-type-v")

# Suffix words that make a catalog entry a quantized form of another model.
QUANT_WORDS = {"fp8", "fp4", "nvfp4", "mxfp4", "awq", "gptq", "int4", "int8", "w4a16", "w8a8",
               "w4a8", "bnb", "4bit", "8bit", "gguf", "dynamic", "static", "block"}


@dataclass
class Admission:
    """The engine args to start with, what was decided (one line each), the estimate used."""

    args: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    estimate: dict[str, Any] | None = None


def quantized_variants(model: str, engine: str | None = None) -> tuple[str, ...]:
    """Catalog models that are MODEL in a quantized form (e.g. its -FP8 release)."""
    from gpumod.catalog.models import load_catalog

    base = model.rstrip("/").split("/")[-1].lower()
    out = []
    for known in load_catalog().values():
        if known.id.lower() == model.lower() or (engine and known.engine != engine):
            continue
        name = known.id.split("/")[-1].lower()
        if not name.startswith(base + "-"):
            continue
        words = [w for w in re.split(r"[-_.]", name[len(base) + 1:]) if w]
        if words and all(w in QUANT_WORDS for w in words):
            out.append(known.id)
    return tuple(out)


def precheck(spec: Any, gpus: list[GPUState], host_name: str, *, force: bool
             ) -> Admission | None:
    """What is decided before the model's facts are read: bad GPUs, generic engines.

    Returns the admission when nothing more is to be checked, else None.
    """
    args = tuple(spec.args)
    known = {g.index for g in gpus}
    missing = [i for i in spec.gpus if i not in known]
    if missing:
        raise UsageError(f"{spec.name}: GPU {missing[0]} does not exist on {host_name}",
                         hint=f"GPUs there: {', '.join(map(str, sorted(known))) or 'none'}")
    if spec.engine not in ("vllm", "llamacpp"):
        return _check_declared(spec, gpus, args, force)
    if spec.engine == "vllm":
        from gpumod.engines.base import flag_value

        value = flag_value(args, VLLM_DP)
        if value not in (None, "1"):
            return Admission(args, [f"no VRAM check: data parallel ({VLLM_DP[0]} {value}) "
                                    "is not modelled by the planner"])
    return None


# ---------------------------------------------------------------------------
# Generic engines: a declared budget, or nothing to check
# ---------------------------------------------------------------------------

def _check_declared(spec: Any, gpus: list[GPUState], args: tuple[str, ...],
                    force: bool) -> Admission:
    if not spec.vram_mib:
        return Admission(args, [f"no VRAM check: {spec.engine} service declares no VRAM budget"])
    by_index = {g.index: g for g in gpus}
    tight = min((by_index[i] for i in spec.gpus), key=_free_mib)
    need = int(spec.vram_mib)
    if need + DEFAULT_MARGIN_MIB <= _free_mib(tight):
        return Admission(args, [f"declared {need} MiB per GPU fits: GPU {tight.index} has "
                                f"{_free_mib(tight) / 1024:.1f} GiB free"])
    message = (f"{spec.name} declares {need / 1024:.1f} GiB per GPU but GPU {tight.index} "
               f"has {_free_mib(tight) / 1024:.1f} GiB free")
    if force:
        return Admission(args, [f"warning: --force: starting although {message}"])
    raise CapacityError(message, hint="stop a service on that GPU, pick another pod "
                                      "(--pod NAME), or --force to start anyway")


# ---------------------------------------------------------------------------
# vLLM and llama.cpp
# ---------------------------------------------------------------------------

def _free_mib(g: GPUState) -> int:
    """Free memory in CUDA's view (what vLLM compares its budget with)."""
    return g.capacity_mib - g.used_mib


def admit(spec: Any, gpus: list[GPUState], req: ServiceRequest, *, force: bool) -> Admission:
    """Place `req` (built by ``gpumod.ops.sizing``) on its GPUs: admit it, or refuse it.

    User-given memory settings are kept and checked; missing ones are computed.
    With `force` a start that does not fit is admitted with a warning note.
    """
    args = tuple(spec.args)
    placement = place(gpus, [req])
    a = placement.assignment(spec.name)
    free_note = "; ".join(f"GPU {g.index}: {_free_mib(g) / 1024:.1f} of "
                          f"{g.capacity_mib / 1024:.1f} GiB free" for g in gpus
                          if g.index in spec.gpus)
    notes = [free_note]
    if req.calibration:
        notes.append(f"estimate calibrated from the measurement of "
                      f"{req.calibration.get('created_at', '?')}")
    if placement.fits and a is not None:
        if spec.engine == "vllm":
            return _admit_vllm(spec, req, a.estimate, a.settings, args, notes)
        return _admit_llamacpp(spec, a.estimate, a.settings, args, notes)
    if spec.engine == "vllm":
        message, first_hint, forced_args, estimate = _vllm_refusal(spec, req, gpus, args)
    else:
        message, first_hint, forced_args, estimate = _llamacpp_refusal(spec, req, gpus, args)
    if force:
        notes.append(f"warning: --force: starting although {message}")
        if forced_args != args:
            notes.append(f"--force: {' '.join(forced_args[len(args):])} (the most that fits "
                         "free memory now)")
        return Admission(forced_args, notes, estimate)
    hints = ([first_hint] if first_hint else []) + _alternatives(gpus, req, placement)
    hints += ["run it on a pod with more GPU memory (--pod NAME)", "--force to start anyway"]
    raise CapacityError(message, hint="; ".join(hints))


def _admit_vllm(spec: Any, req: ServiceRequest, e: dict[str, Any], settings: dict[str, Any],
                args: tuple[str, ...], notes: list[str]) -> Admission:
    from gpumod.engines.base import has_flag

    shape = (f"weights {e['weights_gib']:.1f} GiB, KV cache {e['kv_cache_gib']:.1f} GiB = "
             f"{e['kv_tokens']:,} tokens, {e['max_concurrency']:.1f}x "
             f"{e['max_model_len']:,}-token sequences; {e['total_gib']:.1f} GiB per GPU in all")
    if req.kv_cache_memory_bytes:
        notes.append(f"your --kv-cache-memory-bytes fits: {shape}")
    elif req.gpu_memory_utilization is not None:
        notes.append(f"your --gpu-memory-utilization {req.gpu_memory_utilization:.2f} fits: "
                     f"{shape}")
    else:
        util = float(settings["gpu_memory_utilization"])
        if not has_flag(args, VLLM_UTIL):
            args = (*args, VLLM_UTIL[0], f"{util:.2f}")
        notes.append(f"--gpu-memory-utilization {util:.2f} (computed: {e['requested_gib']:.1f} "
                     f"of the card's {e['gpu_usable_gib']:.1f} GiB, within the memory free "
                     f"now): {shape}")
    return Admission(args, notes, e)


def _admit_llamacpp(spec: Any, e: dict[str, Any], settings: dict[str, Any],
                    args: tuple[str, ...], notes: list[str]) -> Admission:
    from gpumod.engines.base import has_flag

    added: list[str] = []
    ngl = "999" if settings["n_gpu_layers"] == "all" else str(settings["n_gpu_layers"])
    for names, value in ((LLAMA_CTX, str(settings["ctx"])), (LLAMA_NGL, ngl),
                         (LLAMA_CTK, settings["cache_type_k"]),
                         (LLAMA_CTV, settings["cache_type_v"])):
        if not has_flag(args, names):
            added += [names[0], value]
    if added:
        args = (*args, *added)
        notes.append(f"set {' '.join(added)} (not given; explicit so llama.cpp does not "
                     "refit them to free memory)")
    notes.append(f"llama.cpp: weights {e['weights_gib']:.1f} GiB ({e['layers_offloaded']} "
                 f"layers), KV cache {e['kv_cache_gib']:.1f} GiB for -c {e['ctx']}, compute "
                 f"{e['compute_gib']:.1f} GiB; {e['total_gib']:.1f} GiB on the GPU")
    return Admission(args, notes, e)


def _facts(req: ServiceRequest) -> ModelFacts:
    """The request's model facts: placement refuses a vLLM or llama.cpp request without."""
    if req.facts is None:
        raise UsageError(f"{req.name}: no model facts to check the start against")
    return req.facts


def _vllm_estimate(req: ServiceRequest, gpu: GPUState, util: float | None,
                   kv_bytes: int | None = None) -> est.VLLMEstimate:
    args = vllm_args(req, util)
    args.kv_cache_memory_bytes = kv_bytes
    return est.vllm_estimate(_facts(req), gpu_mib=gpu.total_mib, gpu_name=gpu.name, args=args,
                             calibration=req.calibration)


def _outside_budget_mib(e: est.VLLMEstimate) -> float:
    """Memory the process holds beyond util x total: CUDA context (+ graphs before 0.21)."""
    graphs = 0.0 if est.version_tuple(e.version) >= (0, 21) else e.cuda_graph_gib
    return (e.cuda_context_gib + graphs) * 1024


def _vllm_refusal(spec: Any, req: ServiceRequest, gpus: list[GPUState],
                  args: tuple[str, ...]) -> tuple[str, str, tuple[str, ...], dict[str, Any]]:
    """(message, first hint, args to use under --force, estimate) for a vLLM start that fails."""
    mine = [g for g in gpus if g.index in spec.gpus]
    tight = min(mine, key=_free_mib)
    card = min(mine, key=lambda g: g.total_mib)
    usable = cuda_total_mib(card.total_mib)
    free = _free_mib(tight)
    room = free - DEFAULT_MARGIN_MIB
    model, tp = spec.model, req.tp
    where = f"GPU {tight.index} has {free / 1024:.1f} GiB free"

    def short(need_mib: float) -> str:
        return " (0.5 GiB is kept as a margin)" if need_mib <= free else ""

    probe = _vllm_estimate(req, card, 1.0)
    outside = _outside_budget_mib(probe)
    min_util = est.utilization_for(_facts(req), gpu_mib=card.total_mib, gpu_name=card.name,
                                   calibration=req.calibration, args=vllm_args(req, None))
    max_util = math.floor((room - outside) / usable * 100) / 100
    ctx = probe.max_model_len
    fit_hint = ""
    if max_util >= min_util and max_util > 0:
        at_max = _vllm_estimate(req, card, max_util)
        fit_hint = (f"the most that fits now is --gpu-memory-utilization {max_util:.2f} "
                    f"(KV cache {at_max.kv_cache_gib:.1f} GiB, {at_max.max_concurrency:.1f}x "
                    f"{ctx:,}-token sequences)")
    forced = args
    if req.kv_cache_memory_bytes:
        e = _vllm_estimate(req, card, None, req.kv_cache_memory_bytes)
        need: float = e.total_mib
        message = (f"{model} with --kv-cache-memory-bytes {req.kv_cache_memory_bytes} needs "
                   f"{need / 1024:.1f} GiB per GPU with tp={tp} but {where}{short(need)}")
        return message, "a smaller --kv-cache-memory-bytes", forced, e.to_json()
    if req.gpu_memory_utilization is not None:
        e = _vllm_estimate(req, card, req.gpu_memory_utilization)
        if e.problems and e.free_needed_gib * 1024 <= room:
            # it would start, but the share is too small for the model itself
            message = (f"{model} with --gpu-memory-utilization "
                       f"{req.gpu_memory_utilization:.2f}: {e.problems[0]}")
            if not fit_hint and min_util <= 1:
                fit_hint = (f"it needs at least --gpu-memory-utilization {min_util:.2f} for "
                            f"one {ctx:,}-token sequence")
            return message, fit_hint, forced, e.to_json()
        need = e.total_mib
        message = (f"{model} with --gpu-memory-utilization {req.gpu_memory_utilization:.2f} "
                   f"needs {need / 1024:.1f} GiB per GPU with tp={tp} but {where}"
                   f"{short(need)}")
        if not fit_hint:
            fit_hint = (f"even the smallest share that holds one {ctx:,}-token sequence "
                        f"({min_util:.2f}) does not fit" if min_util <= 1 else "")
        return message, fit_hint, forced, e.to_json()
    # computed utilization: the smallest that serves one sequence does not fit
    need = min_util * usable + outside
    elem = est.KV_CACHE_BYTES.get(req.kv_cache_dtype) or est.dtype_bytes(_facts(req))
    seq_gib = est.kv_per_sequence_bytes(_facts(req), tp, elem, ctx) / GIB
    message = (f"{model} needs {need / 1024:.1f} GiB per GPU with tp={tp} (weights "
               f"{probe.weights_gib:.1f} GiB + KV cache for one {ctx:,}-token sequence "
               f"{seq_gib:.1f} GiB + activation and overheads) but {where}{short(need)}")
    e = probe
    if max_util > 0:
        forced = (*args, VLLM_UTIL[0], f"{min(max_util, 1.0):.2f}")
        e = _vllm_estimate(req, card, min(max_util, 1.0))
    return message, "", forced, e.to_json()


def _llamacpp_refusal(spec: Any, req: ServiceRequest, gpus: list[GPUState],
                      args: tuple[str, ...]) -> tuple[str, str, tuple[str, ...], dict[str, Any]]:
    mine = [g for g in gpus if g.index in spec.gpus]
    tight = min(mine, key=_free_mib)
    free = _free_mib(tight)
    largs = llamacpp_args(req)
    facts = _facts(req)
    e = est.llamacpp_estimate(facts, gpu_mib=tight.total_mib, args=largs,
                              calibration=req.calibration)
    ngl = "all" if largs.n_gpu_layers >= facts.num_layers else str(largs.n_gpu_layers)
    short = " (0.5 GiB is kept as a margin)" if e.total_mib <= free else ""
    message = (f"{spec.model} needs {e.total_gib:.1f} GiB on GPU {tight.index} with "
               f"-c {largs.ctx} -ngl {ngl} -ctk {largs.cache_type_k} -ctv {largs.cache_type_v} "
               f"but it has {free / 1024:.1f} GiB free{short}")
    return message, "", args, e.to_json()


def _alternatives(gpus: list[GPUState], req: ServiceRequest, failed: Placement) -> list[str]:
    """Ranked alternatives: the placement's own, plus more GPUs (tensor parallel)."""
    alts: list[Alternative] = list(failed.alternatives)
    tp2 = req.tp * 2
    if req.engine == "vllm" and req.facts is not None and tp2 * req.pp <= len(gpus) \
            and req.facts.num_heads % tp2 == 0 \
            and not any(a.kind == "more-gpus" for a in alts):
        try:
            p = place(gpus, [replace(req, tp=tp2, pinned_gpus=())], with_alternatives=False)
        except GpumodError:
            p = None
        if p is not None and p.fits:
            alts.append(Alternative(0, "more-gpus", f"{req.name}: {tp2} GPUs with "
                                    f"--tensor-parallel-size {tp2}", 0,
                                    {"service": req.name, "tp": tp2}))
    order = {"shorter-context": 0, "fp8-kv": 1, "quantized-kv": 1, "fp8-kv+shorter-context": 2,
             "other-gpu": 3, "sleep": 4, "more-gpus": 5, "quantized": 6, "offload": 7}
    alts.sort(key=lambda a: (order.get(a.kind, 9), -a.saves_mib))
    out: list[str] = []
    for a in alts:
        if a.description not in out:
            out.append(a.description)
    return [f"[{n}] {text}" for n, text in enumerate(out[:6], start=1)]

