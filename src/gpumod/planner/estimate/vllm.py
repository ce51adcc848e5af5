"""Per-GPU memory of `vllm serve MODEL ARGS`, as vLLM itself will size it at start.

vLLM (V1 engine) sizes its KV pool at start::

    requested = gpu_memory_utilization x total      (total: CUDA's view of the card)
    kv_pool   = requested - weights - activation_peak - non_torch   (- cuda_graphs, >= 0.21)

and the process then holds ``requested`` plus the CUDA context (and, before
0.21, the CUDA graph pool, captured after the KV cache is sized). The moving
parts (activation, non-torch, graphs, batch limits per version and card) are in
:mod:`gpumod.planner.estimate.vllm_profile`.

Tensor and pipeline parallel: ``tp`` splits every layer's weights and KV heads
across the GPUs of a stage; ``pp`` splits the layers into stages (the first
holds the embedding, the last the output head and the sampler). The estimate
is for the tightest stage; the engine's KV token count is that stage's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gpumod.errors import UsageError
from gpumod.planner.estimate.common import (
    DEFAULT_VLLM_VERSION,
    KV_CACHE_BYTES,
    EstimateResult,
    dtype_bytes,
    embedding_bytes,
    estimate_weight_bytes,
    gib,
    kv_layer_bytes_per_token,
    layer_counts,
    replicated_weight_bytes,
    rope_cache_bytes,
    version_tuple,
)
from gpumod.planner.estimate.vllm_profile import (
    DEFAULT_CONSTANTS,
    ProfileConstants,
    profile,
)
from gpumod.planner.facts import FULL, LINEAR, MAMBA, SLIDING, ModelFacts
from gpumod.planner.gputable import GIB, MIB
from gpumod.planner.gputable import card as gpu_card
from gpumod.units import parse_bytes, parse_tokens

BLOCK = 16                       # vLLM's KV block size (tokens)


def default_utilization(version: str | None) -> float:
    return 0.92 if version_tuple(version) >= (0, 20) else 0.9


@dataclass
class VLLMArgs:
    """The memory-relevant flags of `vllm serve` (None: vLLM's default for the version)."""

    tp: int = 1
    pp: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    kv_cache_dtype: str = "auto"
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    version: str | None = None

    def setup_key(self) -> str:
        """What decides weights/activation/overheads (not utilization nor context)."""
        key = (f"tp={self.tp};dtype={self.dtype};q={self.quantization or ''};"
               f"kv={self.kv_cache_dtype};seqs={self.max_num_seqs or ''};"
               f"mnbt={self.max_num_batched_tokens or ''};eager={int(self.enforce_eager)}")
        return key + (f";pp={self.pp}" if self.pp > 1 else "")


def parse_vllm_args(argv: list[str] | tuple[str, ...]) -> VLLMArgs:
    """The memory-relevant flags of a `vllm serve` argument list."""
    args = VLLMArgs()
    items = list(argv)
    i = 0

    def value() -> str:
        nonlocal i
        if "=" in items[i]:
            return items[i].split("=", 1)[1]
        i += 1
        if i >= len(items):
            raise UsageError(f"vLLM flag {items[i - 1]} needs a value")
        return items[i]

    def integer(flag: str) -> int:
        text = value()
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"vLLM flag {flag} wants a number, got {text!r}") from None

    while i < len(items):
        flag = items[i].split("=", 1)[0].replace("_", "-")
        if flag in ("--tensor-parallel-size", "-tp"):
            args.tp = integer(flag)
        elif flag in ("--pipeline-parallel-size", "-pp"):
            args.pp = integer(flag)
        elif flag == "--gpu-memory-utilization":
            args.gpu_memory_utilization = float(value())
        elif flag == "--max-model-len":
            args.max_model_len = parse_tokens(value(), what="--max-model-len")
        elif flag == "--kv-cache-dtype":
            args.kv_cache_dtype = value()
        elif flag in ("--kv-cache-memory-bytes", "--kv-cache-memory"):
            args.kv_cache_memory_bytes = parse_bytes(value())
        elif flag == "--max-num-seqs":
            args.max_num_seqs = integer(flag)
        elif flag == "--max-num-batched-tokens":
            args.max_num_batched_tokens = parse_tokens(value(), what="--max-num-batched-tokens")
        elif flag == "--dtype":
            args.dtype = value()
        elif flag in ("--quantization", "-q"):
            args.quantization = value()
        elif flag == "--enforce-eager":
            args.enforce_eager = True
        i += 1
    return args


@dataclass
class VLLMEstimate(EstimateResult):
    engine: str
    model: str
    gpu_mib: int
    gpu_usable_gib: float
    tp: int
    gpu_memory_utilization: float
    max_model_len: int
    kv_cache_dtype: str
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    cuda_graph_gib: float
    cuda_context_gib: float
    requested_gib: float
    kv_cache_gib: float
    kv_bytes_per_token: int
    kv_tokens: int
    kv_blocks: int
    max_concurrency: float
    total_gib: float              # what nvidia-smi will show for this process, per GPU
    free_needed_gib: float        # free memory the GPU needs at start
    min_gpu_memory_utilization: float | None
    fits: bool
    version: str
    pp: int = 1
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    calibrated: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)   # per pipeline stage (pp > 1)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage as vLLM splits them (extra layers before the last stage)."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def kv_layer_slots(facts: ModelFacts, layers: list[str], version: tuple[int, int]) -> int:
    """Attention layers the KV pool is divided over (what "GPU KV cache size" counts).

    The V1 engine's hybrid allocator groups the layers of each kind (full, sliding)
    into groups of the smallest kind's size and pads the last group of each kind:
    Gemma 3 27B's 10 full + 52 sliding layers take 7 groups of 10, 70 slots.
    """
    counts = layer_counts(facts, layers)
    kinds = [n for n in (counts[FULL], counts[SLIDING]) if n]
    if len(kinds) < 2 or version < (0, 8):
        return sum(kinds)
    size = min(kinds)
    return size * sum(math.ceil(n / size) for n in kinds)


def kv_per_sequence_bytes(facts: ModelFacts, tp: int, elem_bytes: float, length: int,
                          layers: list[str] | None = None) -> float:
    """KV memory one sequence of `length` tokens needs (block granularity, windows capped)."""
    per_layer = kv_layer_bytes_per_token(facts, tp, elem_bytes)
    counts = layer_counts(facts, layers)
    tokens = math.ceil(length / BLOCK) * BLOCK
    window = facts.sliding_window or length
    sliding_tokens = min(tokens, (math.ceil(window / BLOCK) + 1) * BLOCK)
    state = (counts[LINEAR] + counts[MAMBA]) * facts.linear_state_bytes
    return counts[FULL] * per_layer * tokens + counts[SLIDING] * per_layer * sliding_tokens + state


@dataclass
class _Stage:
    index: int
    layers: list[str]
    weights: float
    activation: float
    non_torch: float
    graphs: float


def _check(facts: ModelFacts, args: VLLMArgs, gpu_count: int | None) -> tuple[int, int]:
    tp, pp = int(args.tp or 1), int(args.pp or 1)
    if tp < 1 or pp < 1:
        raise UsageError(f"invalid parallel sizes tp={tp} pp={pp}", hint="use 1, 2, 4 or 8")
    if gpu_count is not None and tp * pp > gpu_count:
        raise UsageError(f"tensor parallel size {tp}" + (f" x pipeline {pp}" if pp > 1 else "")
                         + f" needs {tp * pp} GPUs, the host has {gpu_count}",
                         hint=f"use --tp {max(1, gpu_count)} or a bigger pod")
    if facts.num_heads % tp:
        raise UsageError(f"tensor parallel size {tp} does not divide {facts.key}'s "
                         f"{facts.num_heads} attention heads",
                         hint="vLLM needs heads divisible by tp: try " +
                         ", ".join(str(t) for t in (1, 2, 4, 8) if facts.num_heads % t == 0))
    if pp > max(1, facts.num_layers):
        raise UsageError(f"pipeline parallel size {pp} exceeds {facts.key}'s "
                         f"{facts.num_layers} layers")
    return tp, pp


def _stages(facts: ModelFacts, args: VLLMArgs, tp: int, pp: int, card: Any, max_len: int,
            version: str, constants: ProfileConstants) -> tuple[list[_Stage], Any, str]:
    """Weights and profile costs per pipeline stage (one stage when pp == 1)."""
    wb = dtype_bytes(facts, args.dtype)
    total, source = estimate_weight_bytes(facts, dtype=args.dtype, runtime_quant=args.quantization)
    replicated = replicated_weight_bytes(facts, wb) if tp > 1 else 0
    rope = rope_cache_bytes(facts, wb)
    types = facts.attention_layer_types()
    split = stage_layers(len(types), pp)
    stages: list[_Stage] = []
    prof = None
    start = 0
    for s, n in enumerate(split):
        last = s == pp - 1
        layers = types[start:start + n]
        start += n
        if pp == 1:
            weights = (total - replicated) / tp + replicated + rope
        else:
            embed = embedding_bytes(facts, wb)
            body = max(0.0, total - embed * (1 if facts.tie_embeddings else 2))
            edge = embed if s == 0 or last else 0      # the first holds the embedding, the last
            weights = body * n / max(1, facts.num_layers) / tp + edge / tp + rope  # the head
        prof = profile(facts, card=card, tp=tp, pp=pp, layers=n, max_model_len=max_len,
                       version=version, max_num_seqs=args.max_num_seqs,
                       max_num_batched_tokens=args.max_num_batched_tokens,
                       enforce_eager=args.enforce_eager, last_stage=last, constants=constants)
        stages.append(_Stage(s, layers, weights, prof.activation, prof.non_torch,
                             prof.cuda_graphs))
    return stages, prof, source


def vllm_estimate(facts: ModelFacts, *, gpu_mib: int, args: VLLMArgs | None = None,
                  gpu_count: int | None = None, calibration: dict[str, Any] | None = None,
                  gpu_name: str | None = None,
                  constants: ProfileConstants = DEFAULT_CONSTANTS) -> VLLMEstimate:
    """Per-GPU estimate for `vllm serve MODEL` with `args` on a card of `gpu_mib` MiB.

    ``args.tp`` x ``args.pp`` GPUs of this card (``gpu_name`` tells which card, e.g.
    "NVIDIA H100 80GB HBM3"; else the card of that size). ``calibration`` is a
    measurement of the same setup (its ``actual`` weights/activation/non-torch/graph
    figures replace the estimated ones).
    """
    args = args or VLLMArgs()
    version = args.version or DEFAULT_VLLM_VERSION
    tp, pp = _check(facts, args, gpu_count)
    card = gpu_card(gpu_name, gpu_mib)
    util = args.gpu_memory_utilization
    if util is None:
        util = default_utilization(version)
    if not 0 < util <= 1:
        raise UsageError(f"--gpu-memory-utilization {util} is outside (0, 1]",
                         hint="it is a share of the whole card, e.g. 0.9")
    max_len = args.max_model_len or facts.max_position or 4096
    if facts.max_position and max_len > facts.max_position:
        raise UsageError(f"context {max_len} is beyond {facts.key}'s maximum "
                         f"({facts.max_position} tokens)",
                         hint=f"use --max-model-len {facts.max_position} or less")
    if max_len < 1:
        raise UsageError("--max-model-len must be positive")
    kv_dtype = args.kv_cache_dtype or "auto"
    if kv_dtype not in KV_CACHE_BYTES:
        raise UsageError(f"unknown --kv-cache-dtype {kv_dtype!r}",
                         hint="use auto, fp8, fp8_e4m3 or fp8_e5m2")
    elem = KV_CACHE_BYTES[kv_dtype] or dtype_bytes(facts, args.dtype)
    total_usable = card.usable_mib * MIB if card.smi_mib == gpu_mib else \
        gpu_card(None, gpu_mib).usable_mib * MIB
    stages, prof, weights_source = _stages(facts, args, tp, pp, card, max_len, version,
                                           constants)
    notes = [f"weights: {weights_source}", *prof.notes]
    calibrated = _calibrate(stages, calibration)
    if calibrated and calibration:
        notes.append(f"calibrated from the measurement of {calibration.get('created_at', '?')}")
    per_layer = kv_layer_bytes_per_token(facts, tp, elem)
    # the stage with the fewest KV tokens decides the engine's pool (vLLM takes the minimum)
    results = [_size_stage(st, facts, args, tp, elem, per_layer, util, total_usable, max_len,
                           prof.graphs_in_budget) for st in stages]
    worst = min(results, key=lambda r: (r["tokens"], r["pool"]))
    st = stages[worst["index"]]
    util, requested, pool = worst["util"], worst["requested"], worst["pool"]
    token_bytes, per_seq = worst["token_bytes"], worst["per_seq"]
    problems: list[str] = []
    if args.kv_cache_memory_bytes:
        notes.append("KV pool pinned by --kv-cache-memory-bytes")
    if pool <= 0:
        problems.append(f"no memory left for the KV cache at utilization {util:.2f}: weights "
                        f"{gib(st.weights)} + activation {gib(st.activation)} + overhead "
                        f"{gib(st.non_torch)} GiB exceed {gib(requested)} GiB")
    pool_pos = max(pool, 0.0)
    blocks = int(pool_pos // (token_bytes * BLOCK)) if token_bytes else 0
    concurrency = pool_pos / per_seq if per_seq else 0.0
    if pool > 0 and concurrency < 1:
        problems.append(f"the KV pool ({gib(pool)} GiB) holds less than one {max_len}-token "
                        f"sequence (needs {gib(per_seq)} GiB)")
    min_util: float | None = math.ceil(max(r["fixed"] + r["per_seq"] for r in results)
                                       / total_usable * 100) / 100
    if min_util is not None and min_util > 1:
        problems.append(f"even the whole card cannot hold the model with a {max_len}-token "
                        "context on one GPU" + (" per rank" if tp * pp > 1 else ""))
        min_util = None
    outside = prof.context + (0 if prof.graphs_in_budget else st.graphs)
    footprint = requested + outside
    if footprint > gpu_mib * MIB:
        problems.append(f"needs {gib(footprint)} GiB per GPU, the card has {gib(gpu_mib * MIB)}")
    notes += _shape_notes(facts, tp, st.layers)
    return VLLMEstimate(
        engine="vllm", model=facts.key, gpu_mib=gpu_mib, gpu_usable_gib=gib(total_usable), tp=tp,
        gpu_memory_utilization=round(util, 4), max_model_len=max_len, kv_cache_dtype=kv_dtype,
        weights_gib=gib(st.weights), activation_gib=gib(st.activation),
        non_torch_gib=gib(st.non_torch), cuda_graph_gib=gib(st.graphs),
        cuda_context_gib=gib(prof.context), requested_gib=gib(requested),
        kv_cache_gib=gib(pool_pos), kv_bytes_per_token=int(token_bytes), kv_tokens=blocks * BLOCK,
        kv_blocks=blocks, max_concurrency=round(concurrency, 2), total_gib=gib(footprint),
        free_needed_gib=gib(requested + prof.context), min_gpu_memory_utilization=min_util,
        fits=not problems, version=version, pp=pp, max_num_seqs=prof.max_num_seqs,
        max_num_batched_tokens=prof.max_num_batched_tokens, calibrated=calibrated,
        stages=[{"stage": r["index"], "layers": len(stages[r["index"]].layers),
                 "weights_gib": gib(stages[r["index"]].weights),
                 "activation_gib": gib(stages[r["index"]].activation),
                 "kv_cache_gib": gib(max(r["pool"], 0.0)), "kv_tokens": r["tokens"]}
                for r in results] if pp > 1 else [],
        problems=problems, notes=notes)


def _calibrate(stages: list[_Stage], calibration: dict[str, Any] | None) -> bool:
    """Replace estimated parts with a measurement's (every stage: the log is rank 0's)."""
    measured = (calibration or {}).get("actual") or {}
    done = False
    for name in ("weights", "activation", "non_torch", "cuda_graph"):
        value = measured.get(f"{name}_gib")
        if value is None:
            continue
        attr = {"cuda_graph": "graphs"}.get(name, name)
        for st in stages:
            setattr(st, attr, float(value) * GIB)
        done = True
    return done


def _size_stage(st: _Stage, facts: ModelFacts, args: VLLMArgs, tp: int, elem: float,
                per_layer: float, util: float, total_usable: float, max_len: int,
                graphs_in_budget: bool) -> dict[str, Any]:
    fixed = st.weights + st.activation + st.non_torch + (st.graphs if graphs_in_budget else 0)
    if args.kv_cache_memory_bytes:
        pool = float(args.kv_cache_memory_bytes)
        requested = fixed + pool
        util = requested / total_usable
    else:
        requested = util * total_usable
        pool = requested - fixed
    token_bytes = per_layer * kv_layer_slots(facts, st.layers, version_tuple(args.version))
    blocks = int(max(pool, 0.0) // (token_bytes * BLOCK)) if token_bytes else 0
    return {"index": st.index, "util": util, "requested": requested, "pool": pool,
            "fixed": fixed, "token_bytes": token_bytes, "tokens": blocks * BLOCK,
            "per_seq": kv_per_sequence_bytes(facts, tp, elem, max_len, st.layers)}


def _shape_notes(facts: ModelFacts, tp: int, layers: list[str]) -> list[str]:
    notes = []
    counts = layer_counts(facts, layers)
    if counts[SLIDING]:
        notes.append(f"{counts[SLIDING]} sliding-window layers capped at {facts.sliding_window} "
                     "tokens per sequence")
    if counts[LINEAR] + counts[MAMBA]:
        notes.append(f"{counts[LINEAR] + counts[MAMBA]} linear/mamba layers hold a fixed state "
                     "per sequence")
    if facts.is_mla:
        notes.append("MLA: latent KV (kv_lora_rank + rope dim), replicated on each TP rank")
    elif facts.num_kv_heads < tp:
        notes.append(f"{facts.num_kv_heads} KV heads < tp {tp}: heads replicated")
    return notes


def utilization_for(facts: ModelFacts, *, gpu_mib: int, args: VLLMArgs, sequences: float = 1.0,
                    headroom: float = 0.0, calibration: dict[str, Any] | None = None,
                    gpu_name: str | None = None) -> float:
    """Smallest --gpu-memory-utilization that serves `sequences` x max_model_len tokens."""
    probe = vllm_estimate(facts, gpu_mib=gpu_mib, gpu_name=gpu_name, calibration=calibration,
                          args=VLLMArgs(**{**asdict(args), "gpu_memory_utilization": 1.0,
                                           "kv_cache_memory_bytes": None}))
    usable = probe.gpu_usable_gib * GIB
    graphs = probe.cuda_graph_gib if version_tuple(probe.version) >= (0, 21) else 0
    fixed = (probe.weights_gib + probe.activation_gib + probe.non_torch_gib + graphs) * GIB
    elem = KV_CACHE_BYTES.get(args.kv_cache_dtype or "auto") or dtype_bytes(facts, args.dtype)
    per_seq = kv_per_sequence_bytes(facts, probe.tp, elem, probe.max_model_len)
    if probe.pp > 1:   # the tightest stage holds its share of the layers
        per_seq *= max(stage_layers(facts.num_layers, probe.pp)) / max(1, facts.num_layers)
    need = fixed + per_seq * sequences + headroom
    return math.ceil(need / usable * 100) / 100
