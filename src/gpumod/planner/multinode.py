"""Sizing one model across several nodes: tensor parallel inside a node, pipeline across.

vLLM splits the layers into ``pp`` stages (one per node) and each stage's weights and KV
cache over ``tp`` GPUs. The planner's estimate knows both (:func:`estimate.vllm_estimate`
with ``VLLMArgs(tp=.., pp=..)``: the per-GPU figures of the tightest stage, the first
holding the embedding and the last the LM head). Every GPU of every node must hold it,
so the check uses the smallest card and the least free memory of all of them (free
memory as seen now, less what other starts on those pods were admitted but do not hold
yet: :mod:`gpumod.ops.admission`).

:func:`size` picks ``--gpu-memory-utilization`` (vLLM's default share, lowered to what is
free now, never below what one full-length sequence needs) or checks the user's, and when
nothing fits raises :class:`CapacityError` with ranked alternatives: more pods, a shorter
context, an fp8 KV cache, a quantized variant from the catalog.

The one-host admission (``ops.sizing.check_start``) models pp on ONE host's GPUs (its
placement pins tp x pp GPUs of that host and offers one-host alternatives), so a
deployment across pods is sized here, with the same estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod.errors import CapacityError, UsageError
from gpumod.planner import estimate as est
from gpumod.planner.facts import ModelFacts

MARGIN_MIB = 512                   # kept free on every GPU, as the one-node admission does
MAX_PODS = 8
CONTEXT_STEPS = (131072, 65536, 32768, 16384, 8192, 4096)


@dataclass
class NodeGPUs:
    """One node's GPUs as the planner needs them."""

    pod: str
    total_mib: list[int]            # nvidia-smi memory.total per GPU
    free_mib: list[int]             # memory.free per GPU, now (less other starts' reservations)
    names: list[str] = field(default_factory=list)   # nvidia-smi name per GPU


@dataclass(frozen=True)
class Card:
    """The card that sizes the deployment: the smallest of all nodes."""

    mib: int
    name: str | None = None


@dataclass
class Sizing:
    args: tuple[str, ...]           # the engine args to start with
    notes: list[str] = field(default_factory=list)
    estimate: dict[str, Any] | None = None


def _estimate(facts: ModelFacts, tp: int, pp: int, gpu: Card, args: est.VLLMArgs,
              util: float | None) -> est.VLLMEstimate:
    """Per GPU of the tightest pipeline stage (the planner's own tp x pp estimate)."""
    return est.vllm_estimate(facts, gpu_mib=gpu.mib, gpu_name=gpu.name,
                             args=replace(args, tp=tp, pp=pp, gpu_memory_utilization=util))


def _outside_mib(e: est.VLLMEstimate) -> float:
    graphs = 0.0 if est.version_tuple(e.version) >= (0, 21) else e.cuda_graph_gib
    return (e.cuda_context_gib + graphs) * 1024


def _max_util(e: est.VLLMEstimate, free_mib: int) -> float:
    """The largest share of the card that fits `free_mib` (with the margin)."""
    usable = e.gpu_usable_gib * 1024
    return math.floor((free_mib - MARGIN_MIB - _outside_mib(e)) / usable * 100) / 100


def _fits(facts: ModelFacts, tp: int, pp: int, gpu: Card, free_mib: int,
          args: est.VLLMArgs) -> est.VLLMEstimate | None:
    """The estimate at the largest share that fits free memory, if it serves a sequence."""
    try:
        probe = _estimate(facts, tp, pp, gpu, args, 1.0)
    except UsageError:
        return None
    util = min(_max_util(probe, free_mib), 1.0)
    if util <= 0:
        return None
    e = _estimate(facts, tp, pp, gpu, args, util)
    return None if e.problems else e


def _card(nodes: list[NodeGPUs]) -> Card:
    smallest = min((m, n.names[i] if i < len(n.names) else None)
                   for n in nodes for i, m in enumerate(n.total_mib))
    return Card(smallest[0], smallest[1] or None)


def size(facts: ModelFacts, *, model: str, tp: int, pp: int, nodes: list[NodeGPUs],
         engine_args: tuple[str, ...], version: str | None = None,
         variants: tuple[str, ...] = ()) -> Sizing:
    """Engine args for `model` on `nodes` with tp x pp, or CapacityError with alternatives."""
    args = est.parse_vllm_args(list(engine_args))
    args.version = version or args.version
    gpu = _card(nodes)
    free_mib = min(m for n in nodes for m in n.free_mib)
    tight = min(((n.pod, i, f) for n in nodes for i, f in enumerate(n.free_mib)),
                key=lambda x: x[2])
    where = (f"the tightest GPU (GPU {tight[1]} on {tight[0]}) has {free_mib / 1024:.1f} "
             f"of {gpu.mib / 1024:.1f} GiB free")
    shape = f"tp={tp} x pp={pp}"

    def alternatives(fallback: str) -> str:
        return "; ".join(_alternatives(facts, tp, pp, gpu, free_mib, args, variants)
                         or [fallback])

    user_util = args.gpu_memory_utilization
    if user_util is not None or args.kv_cache_memory_bytes:
        e = _estimate(facts, tp, pp, gpu, args, user_util)
        free_ok = e.free_needed_gib * 1024 + MARGIN_MIB <= free_mib
        if not e.problems and free_ok:
            return Sizing(tuple(engine_args), [f"your memory settings fit ({shape}): "
                                               + _shape(e)], e.to_json())
        why = e.problems[0] if e.problems else (f"it needs {e.free_needed_gib:.1f} GiB free "
                                                f"per GPU but {where}")
        raise CapacityError(f"{model} does not fit with your memory settings ({shape}): {why}",
                            hint=alternatives("leave --gpu-memory-utilization out"))
    try:
        probe = _estimate(facts, tp, pp, gpu, args, 1.0)
    except UsageError as exc:
        raise UsageError(f"{model} cannot run with {shape}: {exc.message}",
                         hint=exc.hint) from None
    best = min(est.default_utilization(args.version), _max_util(probe, free_mib))
    e = _estimate(facts, tp, pp, gpu, args, best) if best > 0 else probe
    if best > 0 and e.problems:
        best = min(_max_util(probe, free_mib), 1.0)
        e = _estimate(facts, tp, pp, gpu, args, best)
    if best <= 0 or e.problems:
        per_seq = probe.weights_gib + probe.activation_gib + probe.non_torch_gib
        raise CapacityError(
            f"{model} does not fit {len(nodes)} pod(s) with {shape}: each GPU needs "
            f"{per_seq:.1f} GiB for its share of the weights and activations plus the KV "
            f"cache of one {probe.max_model_len:,}-token sequence, but {where}",
            hint=alternatives("use pods with bigger GPUs"))
    out = (*engine_args, "--gpu-memory-utilization", f"{best:.2f}")
    return Sizing(out, [f"--gpu-memory-utilization {best:.2f} (computed for {shape}; "
                        f"{where}): " + _shape(e)], e.to_json())


def _shape(e: est.VLLMEstimate) -> str:
    return (f"per GPU weights {e.weights_gib:.1f} GiB, KV cache {e.kv_cache_gib:.1f} GiB = "
            f"{e.kv_tokens:,} tokens ({e.max_concurrency:.1f}x {e.max_model_len:,}-token "
            f"sequences), {e.total_gib:.1f} GiB in all")


def _alternatives(facts: ModelFacts, tp: int, pp: int, gpu: Card, free_mib: int,
                  args: est.VLLMArgs, variants: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for more in range(pp + 1, MAX_PODS + 1):
        if _fits(facts, tp, more, gpu, free_mib, args):
            out.append(f"{more} pods of the same kind (--pods with {more} names: pipeline "
                       f"parallel {more})")
            break
    current = args.max_model_len or facts.max_position or 0
    for ctx in CONTEXT_STEPS:
        if ctx < current and _fits(facts, tp, pp, gpu, free_mib,
                                   replace(args, max_model_len=ctx)):
            out.append(f"a shorter context: --context {ctx // 1024}k")
            break
    if args.kv_cache_dtype in ("auto", "", None) and _fits(
            facts, tp, pp, gpu, free_mib, replace(args, kv_cache_dtype="fp8")):
        out.append("an fp8 KV cache: --vllm ... --kv-cache-dtype fp8")
    out += [f"a quantized variant: {v}" for v in variants[:2]]
    return [f"[{n}] {text}" for n, text in enumerate(out, start=1)]
