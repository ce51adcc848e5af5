"""Alternatives: the smallest changes that make a set of services fit.

Shorter contexts, an fp8 or quantized KV cache, more GPUs (tensor parallel),
a quantized variant from the catalog, another GPU, partial offload (llama.cpp),
and time-sharing through sleep; each is tried with the real placer and ranked,
least disruptive first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpumod.errors import CapacityError, UsageError
from gpumod.planner import estimate as est

Placer = Callable[..., Any]


@dataclass
class Alternative:
    rank: int
    kind: str   # shorter-context | fp8-kv | quantized | sleep | other-gpu | more-gpus | offload
    description: str
    saves_mib: int = 0
    changes: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Alternatives
# ---------------------------------------------------------------------------

def _trier(place: Placer) -> Callable[..., Any]:
    def attempt(gpus: list[Any], requests: list[Any], margin_mib: int,
                neighbours: Sequence[Any] = ()) -> Any:
        try:
            p = place(gpus, requests, margin_mib=margin_mib, neighbours=neighbours,
                      with_alternatives=False)
        except (UsageError, CapacityError):
            return None
        return p if p.fits else None
    return attempt


def _model_max(req: Any) -> int:
    return (req.facts.max_position if req.facts and req.facts.max_position else 0) or 4096


def alternatives(gpus: list[Any], requests: list[Any], failed: Any, *, place: Placer,
                 margin_mib: int, neighbours: Sequence[Any] = ()) -> list[Alternative]:
    """Ranked changes that make the set fit (least disruptive first), combinations included.

    `place` is the placer to try each change with (``placement.place``).
    """
    _try = _trier(place)
    out: list[Alternative] = []
    overflow = max(0, -min(f.free_after_mib - f.margin_mib for f in failed.gpus))
    targets = [r for r in requests if r.name in failed.unplaced] or list(requests)
    for req in sorted(targets, key=lambda r: -(failed.assignment(r.name).per_gpu_mib
                                                if failed.assignment(r.name) else 0)):
        idx = requests.index(req)
        current = failed.assignment(req.name)
        cur_mib = current.per_gpu_mib if current else 0

        def variant(_req: Any = req, _idx: int = idx, **changes: Any) -> list[Any]:
            return [*requests[:_idx], replace(_req, **changes), *requests[_idx + 1:]]

        def saved(p: Any, _name: str = req.name, _cur: int = cur_mib) -> int:
            a = p.assignment(_name)
            return max(0, _cur - (a.per_gpu_mib if a else 0))

        if req.engine == "vllm" and req.facts is not None:
            ctx = req.context or _model_max(req)
            # 1. shorter context (largest that fits)
            length = ctx // 2
            while length >= 2048:
                p = _try(gpus, variant(context=length), margin_mib)
                if p:
                    out.append(Alternative(0, "shorter-context",
                                           f"{req.name}: --max-model-len {length} (was {ctx})",
                                           saved(p), {"service": req.name, "context": length}))
                    break
                length //= 2
            # 2. fp8 KV cache, alone and with a shorter context
            if req.kv_cache_dtype == "auto":
                p = _try(gpus, variant(kv_cache_dtype="fp8"), margin_mib)
                if p:
                    out.append(Alternative(0, "fp8-kv",
                                           f"{req.name}: --kv-cache-dtype fp8 (halves the KV "
                                           "cache per token)", saved(p),
                                           {"service": req.name, "kv_cache_dtype": "fp8"}))
                else:
                    length = ctx // 2
                    while length >= 2048:
                        p = _try(gpus, variant(kv_cache_dtype="fp8", context=length), margin_mib)
                        if p:
                            out.append(Alternative(
                                0, "fp8-kv+shorter-context",
                                f"{req.name}: --kv-cache-dtype fp8 and --max-model-len {length}",
                                saved(p), {"service": req.name, "kv_cache_dtype": "fp8",
                                           "context": length}))
                            break
                        length //= 2
            # 3. more GPUs (tensor parallel)
            if req.tp * 2 * req.pp <= len(gpus) and req.facts.num_heads % (req.tp * 2) == 0 \
                    and not req.pinned_gpus:
                p = _try(gpus, variant(tp=req.tp * 2), margin_mib)
                if p:
                    out.append(Alternative(0, "more-gpus",
                                           f"{req.name}: --tensor-parallel-size {req.tp * 2}",
                                           saved(p), {"service": req.name, "tp": req.tp * 2}))
        if req.engine == "llamacpp" and req.facts is not None:
            for k, v in (("q8_0", "q8_0"), ("q4_0", "q4_0")):
                if req.cache_type_k == "f16":
                    p = _try(gpus, variant(cache_type_k=k, cache_type_v=v), margin_mib)
                    if p:
                        out.append(Alternative(0, "quantized-kv",
                                               f"{req.name}: -ctk {k} -ctv {v}", saved(p),
                                               {"service": req.name, "cache_type_k": k,
                                                "cache_type_v": v}))
                        break
            ctx = req.context or 4096
            length = ctx // 2
            while length >= 1024:
                p = _try(gpus, variant(context=length), margin_mib)
                if p:
                    out.append(Alternative(0, "shorter-context",
                                           f"{req.name}: -c {length} (was {ctx})", saved(p),
                                           {"service": req.name, "context": length}))
                    break
                length //= 2
            # partial offload: as many layers as fit on the emptiest GPU
            g = max(gpus, key=lambda g: g.capacity_mib - g.used_mib)
            others = sum(a.per_gpu_mib for a in failed.assignments
                         if a.service != req.name and g.index in a.gpus)
            budget = g.capacity_mib - g.used_mib - others - margin_mib
            largs = est.parse_llamacpp_args(list(req.engine_args))
            largs.ctx, largs.parallel = req.context or largs.ctx, req.parallel
            largs.cache_type_k, largs.cache_type_v = req.cache_type_k, req.cache_type_v
            n = est.llamacpp_max_layers(req.facts, budget_mib=budget, args=largs)
            if 0 < n < req.facts.num_layers:
                out.append(Alternative(0, "offload",
                                       f"{req.name}: -ngl {n} ({req.facts.num_layers - n} "
                                       "layers on the CPU, slower)", 0,
                                       {"service": req.name, "n_gpu_layers": n}))
        # 4. a quantized variant from the catalog, or a generic hint
        for name in req.variants:
            out.append(Alternative(0, "quantized", f"{req.name}: use {name}", 0,
                                   {"service": req.name, "model": name}))
        if not req.variants and req.facts is not None and not req.facts.quant_method \
                and req.engine == "vllm":
            weights = (current.estimate.get("weights_gib", 0) if current else 0)
            if weights:
                out.append(Alternative(0, "quantized",
                                       f"{req.name}: an FP8 or 4-bit (AWQ/GPTQ) variant of the "
                                       f"model would need ~{weights / 2:.1f} / "
                                       f"{weights / 3.5:.1f} GiB of weights instead of "
                                       f"{weights:.1f}", int(weights / 2 * 1024),
                                       {"service": req.name, "quantize": "fp8|awq"}))
        # 5. another GPU (when pinned) or time-sharing through sleep
        if req.pinned_gpus:
            p = _try(gpus, variant(pinned_gpus=()), margin_mib)
            if p and p.assignment(req.name):
                gpus_txt = ",".join(map(str, p.assignment(req.name).gpus))
                out.append(Alternative(0, "other-gpu", f"{req.name}: run on GPU {gpus_txt}",
                                       0, {"service": req.name, "gpus": gpus_txt}))
    # 6. sleep neighbours (time-share)
    sleepers = [n for n in neighbours if n.sleep_mode in ("l1", "l2", "router")]
    if sleepers and overflow:
        freed = sum(n.mib - (n.weights_mib if n.sleep_mode == "l1" else 0) for n in sleepers)
        names = ", ".join(f"{n.name} ({n.sleep_mode})" for n in sleepers)
        if freed >= overflow:
            out.append(Alternative(0, "sleep", f"sleep {names} while this runs (time-share)",
                                   freed, {"sleep": [n.name for n in sleepers]}))
    for req in requests:
        if req.sleep_mode in ("l1", "l2") and len(requests) > 1:
            rest = [r for r in requests if r is not req]
            if _try(gpus, rest, margin_mib):
                out.append(Alternative(0, "sleep",
                                       f"time-share: keep {req.name} asleep ({req.sleep_mode}) "
                                       "and wake it on demand", 0,
                                       {"sleep": [req.name]}))
    # rank: fits with the smallest change first (order of kinds), then by saving
    order = {"shorter-context": 0, "fp8-kv": 1, "fp8-kv+shorter-context": 2, "quantized-kv": 1,
             "other-gpu": 3, "sleep": 4, "more-gpus": 5, "quantized": 6, "offload": 7}
    out.sort(key=lambda a: (order.get(a.kind, 9), -a.saves_mib))
    seen: set[str] = set()
    ranked: list[Alternative] = []
    for a in out:
        if a.description in seen:
            continue
        seen.add(a.description)
        a.rank = len(ranked) + 1
        ranked.append(a)
    return ranked
