"""Per-GPU memory of `llama-server -m MODEL ARGS`: weights, KV cache, compute buffer.

llama.cpp offloads the last ``-ngl`` layers (the output layer goes with
``-ngl`` above the layer count), allocates the KV cache for ``-c`` cells
(padded to 256) for all slots together, and reserves a compute buffer for the
worst-case graph of one ``-ub`` micro-batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gpumod.errors import UsageError
from gpumod.planner.estimate.common import (
    EstimateResult,
    dtype_bytes,
    estimate_weight_bytes,
    gib,
)
from gpumod.planner.facts import FULL, LINEAR, MAMBA, SLIDING, ModelFacts
from gpumod.planner.gputable import GIB, MIB
from gpumod.units import parse_tokens

# llama.cpp cache types: bytes per element (block formats include their scales)
LLAMA_CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                     "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}


@dataclass
class LlamaCppArgs:
    ctx: int = 4096                 # -c: total context across all slots
    n_gpu_layers: int = 999         # -ngl
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    parallel: int = 1               # -np
    ubatch: int = 512               # -ub: the micro-batch the compute buffer is sized for
    batch: int = 2048               # -b: a micro-batch never exceeds it
    flash_attn: bool = True         # -fa (llama.cpp's "auto" turns it on where supported)
    swa_full: bool = False


def parse_llamacpp_args(argv: list[str] | tuple[str, ...]) -> LlamaCppArgs:
    args = LlamaCppArgs()
    items = list(argv)
    i = 0
    while i < len(items):
        flag, _, inline = items[i].partition("=")

        def value(flag: str = flag, inline: str = inline) -> str:
            nonlocal i
            if inline:
                return inline
            i += 1
            if i >= len(items):
                raise UsageError(f"llama-server flag {flag} needs a value")
            return items[i]

        if flag in ("-c", "--ctx-size"):
            args.ctx = parse_tokens(value(), what="-c")
        elif flag in ("-ngl", "--n-gpu-layers", "--gpu-layers"):
            v = value()
            # llama.cpp reads a negative -ngl (e.g. -1) as "all layers", like "all"/"auto"
            args.n_gpu_layers = 999 if v in ("all", "auto") or int(v) < 0 else int(v)
        elif flag in ("-ctk", "--cache-type-k"):
            args.cache_type_k = value()
        elif flag in ("-ctv", "--cache-type-v"):
            args.cache_type_v = value()
        elif flag in ("-np", "--parallel"):
            args.parallel = int(value())
        elif flag in ("-ub", "--ubatch-size"):
            args.ubatch = int(value())
        elif flag in ("-b", "--batch-size"):
            args.batch = int(value())
        elif flag in ("-fa", "--flash-attn"):
            nxt = items[i + 1] if i + 1 < len(items) and not inline else inline
            if nxt in ("on", "off", "auto"):
                args.flash_attn = nxt != "off"
                if not inline:
                    i += 1
            else:
                args.flash_attn = True
        elif flag == "--swa-full":
            args.swa_full = True
        i += 1
    return args


@dataclass
class LlamaCppEstimate(EstimateResult):
    engine: str
    model: str
    gpu_mib: int
    ctx: int
    n_gpu_layers: int
    layers_offloaded: int
    cache_type_k: str
    cache_type_v: str
    weights_gib: float            # CUDA0 model buffer
    kv_cache_gib: float           # llama_kv_cache size on the GPU
    compute_gib: float            # CUDA0 compute buffer
    cuda_context_gib: float
    total_gib: float
    kv_tokens: int
    max_concurrency: float
    fits: bool
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    compute_bytes: int = 0
    calibrated: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


LLAMA_CONTEXT_GIB = 0.3   # CUDA context + cuBLAS workspace of a llama-server process


def _pad(n: int, to: int) -> int:
    return ((n + to - 1) // to) * to


def compute_buffer_bytes(facts: ModelFacts, *, ub: int, n_ctx: int, flash_attn: bool) -> int:
    """The compute buffer llama.cpp reserves for one `ub`-token micro-batch (f32 graph).

    Its allocator keeps, per token: with flash attention the feed-forward step's
    gate/up/activation rows and five hidden-sized rows (3 x intermediate + 5 x hidden
    floats) plus the f16 attention mask over all `n_ctx` cells; without it the
    attention step's rows (6 x hidden + K and V) plus the f32 scores of every head and
    the f32 mask over `n_ctx` cells. Measured on llama-server's CPU build with SmolLM2
    and a synthetic llama of other widths (tests/integration/test_llamacpp_estimate_real.py).
    Recent builds compute logits only for the last token of each sequence, so no
    vocabulary-sized term (older builds reserved ``ub x vocab`` floats more: a
    calibration after the first start corrects that).
    """
    h, inter = facts.hidden_size, facts.intermediate_size
    kv_width = facts.num_kv_heads * facts.head_dim
    if flash_attn:
        per_token = 4 * (3 * inter + 5 * h) + 2 * n_ctx
    else:
        per_token = 4 * (6 * h + 2 * kv_width) + (4 * facts.num_heads + 4) * n_ctx
    return int(ub * per_token)


def llamacpp_estimate(facts: ModelFacts, *, gpu_mib: int, args: LlamaCppArgs | None = None,
                      calibration: dict[str, Any] | None = None) -> LlamaCppEstimate:
    args = args or LlamaCppArgs()
    for name in (args.cache_type_k, args.cache_type_v):
        if name not in LLAMA_CACHE_BYTES:
            raise UsageError(f"unknown cache type {name!r}",
                             hint="use f16, q8_0 or q4_0 (also bf16, q4_1, q5_0, q5_1)")
    if args.ctx < 1:
        raise UsageError("-c must be positive")
    if facts.max_position and args.ctx // max(1, args.parallel) > facts.max_position:
        raise UsageError(f"context {args.ctx // max(1, args.parallel)} per slot is beyond "
                         f"{facts.key}'s maximum ({facts.max_position})",
                         hint=f"use -c {facts.max_position * max(1, args.parallel)} or less")
    n_layers = facts.num_layers
    offloaded = max(0, min(args.n_gpu_layers, n_layers))
    notes: list[str] = []
    if facts.gguf_layer_bytes:
        # llama.cpp offloads the last n layers; the output layer goes with n > n_layer
        per_layer = facts.gguf_layer_bytes
        weights = float(sum(per_layer[n_layers - offloaded:]))
        if args.n_gpu_layers > n_layers:
            weights += facts.gguf_output_bytes or facts.gguf_embd_bytes
            weights += facts.gguf_other_bytes
        notes.append("weights: GGUF tensor sizes of the offloaded layers")
    else:
        all_weights, source = estimate_weight_bytes(facts)
        embd = facts.vocab_size * facts.hidden_size * dtype_bytes(facts)
        body = max(0.0, all_weights - embd * (1 if facts.tie_embeddings else 2))
        weights = body * offloaded / max(1, n_layers)
        if args.n_gpu_layers > n_layers:
            weights += embd
        notes.append(f"weights: {source}, spread evenly over layers")
    ctx = _pad(args.ctx, 256)
    k_bytes = LLAMA_CACHE_BYTES[args.cache_type_k]
    v_bytes = LLAMA_CACHE_BYTES[args.cache_type_v]
    if facts.is_mla:
        per_token_layer = (facts.kv_lora_rank + facts.qk_rope_head_dim) * k_bytes
    else:
        v_dim = facts.v_head_dim or facts.head_dim
        per_token_layer = facts.num_kv_heads * (facts.head_dim * k_bytes + v_dim * v_bytes)
    types = facts.attention_layer_types()[n_layers - offloaded:]
    swa_ctx = ctx
    if facts.sliding_window and not args.swa_full:
        swa_ctx = min(ctx, _pad(facts.sliding_window * max(1, args.parallel) + args.ubatch, 256))
    kv = 0.0
    for t in types:
        if t == FULL:
            kv += per_token_layer * ctx
        elif t == SLIDING:
            kv += per_token_layer * swa_ctx
        elif t in (LINEAR, MAMBA):
            kv += facts.linear_state_bytes * max(1, args.parallel)
    ub = max(1, min(args.ubatch, args.batch))
    compute: float = compute_buffer_bytes(facts, ub=ub, n_ctx=ctx, flash_attn=args.flash_attn)
    if offloaded == 0:
        compute = ub * facts.hidden_size * 16
    calibrated = False
    if calibration:
        actual = calibration.get("actual") or {}
        if actual.get("weights_gib") is not None:
            weights = float(actual["weights_gib"]) * GIB
            calibrated = True
        if actual.get("compute_gib") is not None:
            compute = float(actual["compute_gib"]) * GIB
            calibrated = True
        if calibrated:
            notes.append("calibrated from a measurement")
    context = LLAMA_CONTEXT_GIB * GIB if offloaded else 0.0
    total = weights + kv + compute + context
    problems = []
    if total > gpu_mib * MIB:
        problems.append(f"needs {gib(total)} GiB, the card has {gib(gpu_mib * MIB)}")
    per_slot = args.ctx // max(1, args.parallel)
    if offloaded < n_layers:
        notes.append(f"{n_layers - offloaded} layers stay on the CPU (slower)")
    return LlamaCppEstimate(
        engine="llamacpp", model=facts.key, gpu_mib=gpu_mib, ctx=args.ctx,
        n_gpu_layers=args.n_gpu_layers, layers_offloaded=offloaded,
        cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
        weights_gib=gib(weights), kv_cache_gib=gib(kv), compute_gib=gib(compute),
        cuda_context_gib=gib(context), total_gib=gib(total), kv_tokens=ctx,
        max_concurrency=round(args.ctx / per_slot, 2) if per_slot else 0.0,
        fits=not problems, weights_bytes=int(weights), kv_cache_bytes=int(kv),
        compute_bytes=int(compute), calibrated=calibrated, problems=problems, notes=notes)


def llamacpp_max_layers(facts: ModelFacts, *, budget_mib: int, args: LlamaCppArgs) -> int:
    """Most layers (-ngl) that fit in `budget_mib` with these args (0 if none)."""
    best = 0
    for n in range(facts.num_layers + 1, -1, -1):
        est = llamacpp_estimate(facts, gpu_mib=10**9, args=LlamaCppArgs(**{**asdict(args),
                                                                          "n_gpu_layers": n}))
        if est.total_mib <= budget_mib:
            best = n
            break
    return best
