"""Per-GPU memory estimates for vLLM and llama.cpp, calibrated on real engine logs.

vLLM (V1 engine) sizes its KV pool at start::

    requested = gpu_memory_utilization x total      (total: CUDA's view of the card)
    kv_pool   = requested - weights - activation_peak - non_torch   (- cuda_graphs, >= 0.21)

and the process then holds ``requested`` plus the CUDA context (and, before
0.21, the CUDA graph pool, captured after the KV cache is sized). Constants
below were fitted to the public vLLM 0.19 logs of llm-d-incubation/llm-d-planner
(accuracy/results/v0.19.0/logs; see bench/estimate_measurements.csv):

- activation peak = 0.157 GiB + max(sampler, dense forward) + MoE workspace,
  sampler = max_num_seqs x vocab x 14.17 bytes (the dummy sampler run holds
  fp32 logits, probabilities and sort buffers); dense forward = tokens x
  (3 x intermediate/tp + 3 x hidden) x 2 bytes; MoE workspace = tokens x top-k x
  (max(2 x moe_intermediate/tp, hidden) + moe_intermediate/tp) x 2 bytes.
  vLLM < 0.17 reported about 2.5x more (Qwen3-14B: 5.64 vs 2.23 GiB).
- non-torch memory: 0.25 GiB at tp=1 (0.13 before 0.18), 2.07 GiB at tp=2 and
  2.13 GiB at tp>=4 (NCCL and custom all-reduce buffers).
- CUDA graphs: 0.5 + 0.012 x layers GiB (+0.3 with tp>1); 0 with --enforce-eager.
- CUDA context: 0.51 GiB (tp=1), 1.8 GiB (tp>1) - outside the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gpumod.errors import UsageError
from gpumod.planner.facts import DTYPE_BYTES, FULL, LINEAR, MAMBA, SLIDING, ModelFacts
from gpumod.planner.gputable import GIB, MIB, cuda_total_mib

BLOCK = 16                       # vLLM's KV block size (tokens)
ACT_BASE_GIB = 0.157
SAMPLER_BYTES_PER_LOGIT = 14.17
OLD_ACTIVATION_FACTOR = 2.5      # vLLM < 0.17
MULTIMODAL_EXTRA_GIB = 0.25      # encoder profiling (Gemma 3: 3.94 measured vs 3.70)
NON_TORCH_GIB = {1: 0.25, 2: 2.07, 4: 2.13}
CONTEXT_GIB_TP1 = 0.51
CONTEXT_GIB_TP = 1.8
DEFAULT_VLLM_VERSION = "0.19"

KV_CACHE_BYTES = {"auto": None, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "bfloat16": 2.0,
                  "float16": 2.0, "half": 2.0}
# llama.cpp cache types: bytes per element (block formats include their scales)
LLAMA_CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
                     "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}


def version_tuple(version: str | None) -> tuple[int, int]:
    m = re.match(r"v?(\d+)\.(\d+)", version or DEFAULT_VLLM_VERSION)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 19)


def default_utilization(version: str | None) -> float:
    return 0.92 if version_tuple(version) >= (0, 20) else 0.9


def gib(n: float) -> float:
    return round(n / GIB, 2)


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------

def dtype_bytes(facts: ModelFacts, dtype: str = "auto") -> float:
    name = facts.dtype if dtype in ("auto", "", None) else dtype
    return DTYPE_BYTES.get(name, 2.0)


def kv_heads_per_rank(facts: ModelFacts, tp: int) -> int:
    """KV heads one GPU holds: heads are split, or replicated when tp > kv heads."""
    return max(1, facts.num_kv_heads // tp) if facts.num_kv_heads >= tp else 1


def kv_layer_bytes_per_token(facts: ModelFacts, tp: int, elem_bytes: float) -> float:
    """Bytes one attention layer stores per token on one GPU."""
    if facts.is_mla:   # latent + rope key, replicated on every rank, no K/V pair
        return (facts.kv_lora_rank + facts.qk_rope_head_dim) * elem_bytes
    v_dim = facts.v_head_dim or facts.head_dim
    return kv_heads_per_rank(facts, tp) * (facts.head_dim + v_dim) * elem_bytes


def layer_counts(facts: ModelFacts) -> dict[str, int]:
    counts = {FULL: 0, SLIDING: 0, LINEAR: 0, MAMBA: 0}
    for t in facts.attention_layer_types():
        if t in counts:
            counts[t] += 1
    return counts


def estimate_weight_bytes(facts: ModelFacts, *, dtype: str = "auto",
                          runtime_quant: str | None = None) -> tuple[int, str]:
    """Total weight bytes (all GPUs): exact when files told us, else from the parameter count."""
    wb = dtype_bytes(facts, dtype)
    base = DTYPE_BYTES.get(facts.dtype, 2.0)
    if facts.weight_bytes and not runtime_quant:
        scale = wb / base if dtype not in ("auto", "", None) and not facts.quant_method else 1.0
        return int(facts.weight_bytes * scale), facts.weight_bytes_source
    params = facts.param_count
    embed = facts.vocab_size * facts.hidden_size * (1 if facts.tie_embeddings else 2)
    linear = max(0, params - embed - facts.vision_params)
    method, bits = facts.quant_method, facts.quant_bits
    if runtime_quant in ("fp8", "fbgemm_fp8"):
        method, bits = "fp8", 8.0
    if method == "mxfp4":          # experts in MXFP4, attention/embeddings in bf16
        experts = (facts.num_layers - facts.first_dense_layers) * facts.num_experts * 3 * \
            facts.hidden_size * facts.moe_intermediate_size
        total = experts * bits / 8 + (params - experts) * wb
        return int(total), "estimated from config.json (MXFP4 experts)"
    if bits and method not in ("gguf",):
        # quantized linear layers (+ ~2 % for scales/zero points); embeddings stay 16-bit
        total = linear * bits / 8 * (1.02 if bits < 8 else 1.0) + (embed + facts.vision_params) * wb
        src = "runtime fp8" if runtime_quant else f"{method} {bits:g}-bit"
        return int(total), f"estimated from config.json ({src})"
    return int(params * wb), "estimated from config.json"


def replicated_weight_bytes(facts: ModelFacts, elem_bytes: float) -> int:
    """Parameters every TP rank holds in full (norms, MLA down-projections, routers)."""
    h = facts.hidden_size
    rep = facts.num_layers * 4 * h + h
    if facts.is_mla:
        rep += facts.num_layers * h * (facts.kv_lora_rank + facts.qk_rope_head_dim
                                       + facts.q_lora_rank)
    if facts.is_moe:
        rep += (facts.num_layers - facts.first_dense_layers) * h * facts.num_experts
    return int(rep * elem_bytes)


def rope_cache_bytes(facts: ModelFacts, elem_bytes: float) -> int:
    rot = facts.qk_rope_head_dim if facts.is_mla else facts.head_dim
    return int(max(facts.max_position, 0) * rot * elem_bytes)


# ---------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------

@dataclass
class VLLMArgs:
    tp: int = 1
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
        return (f"tp={self.tp};dtype={self.dtype};q={self.quantization or ''};"
                f"kv={self.kv_cache_dtype};seqs={self.max_num_seqs or ''};"
                f"mnbt={self.max_num_batched_tokens or ''};eager={int(self.enforce_eager)}")


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

    while i < len(items):
        flag = items[i].split("=", 1)[0].replace("_", "-")
        if flag in ("--tensor-parallel-size", "-tp"):
            args.tp = int(value())
        elif flag == "--gpu-memory-utilization":
            args.gpu_memory_utilization = float(value())
        elif flag == "--max-model-len":
            args.max_model_len = parse_tokens(value())
        elif flag == "--kv-cache-dtype":
            args.kv_cache_dtype = value()
        elif flag in ("--kv-cache-memory-bytes", "--kv-cache-memory"):
            args.kv_cache_memory_bytes = parse_bytes(value())
        elif flag == "--max-num-seqs":
            args.max_num_seqs = int(value())
        elif flag == "--max-num-batched-tokens":
            args.max_num_batched_tokens = parse_tokens(value())
        elif flag == "--dtype":
            args.dtype = value()
        elif flag in ("--quantization", "-q"):
            args.quantization = value()
        elif flag == "--enforce-eager":
            args.enforce_eager = True
        i += 1
    return args


def parse_tokens(text: str | int) -> int:
    """'32k' -> 32768, '1m' -> 1048576, '8192' -> 8192."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise UsageError(f"invalid token count {text!r}", hint="use e.g. 8192, 32k or 1m")
    n = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return int(n)


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise UsageError(f"invalid size {text!r}", hint="use bytes or e.g. 20G, 512M")
    unit = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * unit)


class _EstimateResult:
    """What both engines' estimates share: the per-GPU total in MiB and JSON."""

    total_gib: float

    @property
    def total_mib(self) -> int:
        return math.ceil(self.total_gib * 1024)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class VLLMEstimate(_EstimateResult):
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
    calibrated: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def activation_bytes(facts: ModelFacts, tp: int, max_num_seqs: int, batched_tokens: int,
                     version: str | None) -> float:
    vocab = facts.vocab_size or 32000
    sampler = max_num_seqs * vocab * SAMPLER_BYTES_PER_LOGIT
    forward = batched_tokens * 2 * (3 * facts.intermediate_size / tp + 3 * facts.hidden_size)
    if facts.is_moe:
        forward = batched_tokens * 2 * (3 * facts.moe_intermediate_size / tp
                                        + 3 * facts.hidden_size)
    act = ACT_BASE_GIB * GIB + max(sampler, forward)
    if facts.is_moe:
        i_moe = facts.moe_intermediate_size / tp
        act += batched_tokens * facts.experts_per_token * \
            (max(2 * i_moe, facts.hidden_size) + i_moe) * 2
    if facts.vision_params:
        act += MULTIMODAL_EXTRA_GIB * GIB
    if version_tuple(version) < (0, 17):
        act *= OLD_ACTIVATION_FACTOR
    return act


def non_torch_bytes(tp: int, version: str | None) -> float:
    if tp == 1:
        return (0.25 if version_tuple(version) >= (0, 18) else 0.13) * GIB
    return NON_TORCH_GIB[2 if tp == 2 else 4] * GIB


def cuda_graph_bytes(facts: ModelFacts, tp: int, enforce_eager: bool) -> float:
    if enforce_eager:
        return 0.0
    return (0.5 + 0.012 * facts.num_layers + (0.3 if tp > 1 else 0.0)) * GIB


def kv_per_sequence_bytes(facts: ModelFacts, tp: int, elem_bytes: float, length: int) -> float:
    """KV memory one sequence of `length` tokens needs (block granularity, windows capped)."""
    per_layer = kv_layer_bytes_per_token(facts, tp, elem_bytes)
    counts = layer_counts(facts)
    tokens = math.ceil(length / BLOCK) * BLOCK
    window = facts.sliding_window or length
    sliding_tokens = min(tokens, (math.ceil(window / BLOCK) + 1) * BLOCK)
    state = (counts[LINEAR] + counts[MAMBA]) * facts.linear_state_bytes
    return counts[FULL] * per_layer * tokens + counts[SLIDING] * per_layer * sliding_tokens + state


def vllm_estimate(facts: ModelFacts, *, gpu_mib: int, args: VLLMArgs | None = None,
                  gpu_count: int | None = None, calibration: dict[str, Any] | None = None
                  ) -> VLLMEstimate:
    """Per-GPU estimate for `vllm serve MODEL` with `args` on a card of `gpu_mib` MiB."""
    args = args or VLLMArgs()
    version = args.version or DEFAULT_VLLM_VERSION
    tp = int(args.tp or 1)
    if tp < 1:
        raise UsageError(f"invalid tensor parallel size {tp}", hint="use 1, 2, 4 or 8")
    if gpu_count is not None and tp > gpu_count:
        raise UsageError(f"tensor parallel size {tp} needs {tp} GPUs, the host has {gpu_count}",
                         hint=f"use --tp {max(1, gpu_count)} or a bigger pod")
    if facts.num_heads % tp:
        raise UsageError(f"tensor parallel size {tp} does not divide {facts.key}'s "
                         f"{facts.num_heads} attention heads",
                         hint="vLLM needs heads divisible by tp: try " +
                         ", ".join(str(t) for t in (1, 2, 4, 8) if facts.num_heads % t == 0))
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
    usable_mib = cuda_total_mib(gpu_mib)
    total_usable = usable_mib * MIB
    big_gpu = usable_mib >= 70 * 1024
    max_num_seqs = args.max_num_seqs or (1024 if big_gpu else 256)
    batched = args.max_num_batched_tokens or (8192 if big_gpu else 2048)

    wb = dtype_bytes(facts, args.dtype)
    total_weights, weights_source = estimate_weight_bytes(facts, dtype=args.dtype,
                                                         runtime_quant=args.quantization)
    replicated = replicated_weight_bytes(facts, wb) if tp > 1 else 0
    weights = (total_weights - replicated) / tp + replicated + rope_cache_bytes(facts, wb)
    activation = activation_bytes(facts, tp, max_num_seqs, batched, version)
    non_torch = non_torch_bytes(tp, version)
    graphs = cuda_graph_bytes(facts, tp, args.enforce_eager)
    notes = [f"weights: {weights_source}"]
    calibrated = False
    if calibration:
        measured = calibration.get("actual") or {}
        for name in ("weights", "activation", "non_torch", "cuda_graph"):
            value = measured.get(f"{name}_gib")
            if value is not None:
                if name == "weights":
                    weights = float(value) * GIB
                elif name == "activation":
                    activation = float(value) * GIB
                elif name == "non_torch":
                    non_torch = float(value) * GIB
                else:
                    graphs = float(value) * GIB
                calibrated = True
        if calibrated:
            notes.append(f"calibrated from the measurement of {calibration.get('created_at', '?')}")
    graphs_in_budget = version_tuple(version) >= (0, 21)
    context = (CONTEXT_GIB_TP1 if tp == 1 else CONTEXT_GIB_TP) * GIB
    fixed = weights + activation + non_torch + (graphs if graphs_in_budget else 0)
    problems: list[str] = []
    if args.kv_cache_memory_bytes:
        pool = float(args.kv_cache_memory_bytes)
        requested = fixed + pool
        util = requested / total_usable
        notes.append("KV pool pinned by --kv-cache-memory-bytes")
    else:
        requested = util * total_usable
        pool = requested - fixed
    per_layer = kv_layer_bytes_per_token(facts, tp, elem)
    counts = layer_counts(facts)
    attn_layers = counts[FULL] + counts[SLIDING]
    token_bytes = per_layer * attn_layers
    per_seq = kv_per_sequence_bytes(facts, tp, elem, max_len)
    if pool <= 0:
        problems.append(f"no memory left for the KV cache at utilization {util:.2f}: weights "
                        f"{gib(weights)} + activation {gib(activation)} + overhead "
                        f"{gib(non_torch)} GiB exceed {gib(requested)} GiB")
        pool_pos = 0.0
    else:
        pool_pos = pool
    blocks = int(pool_pos // (token_bytes * BLOCK)) if token_bytes else 0
    kv_tokens = blocks * BLOCK
    concurrency = pool_pos / per_seq if per_seq else 0.0
    if pool > 0 and concurrency < 1:
        problems.append(f"the KV pool ({gib(pool)} GiB) holds less than one {max_len}-token "
                        f"sequence (needs {gib(per_seq)} GiB)")
    min_util = (fixed + per_seq) / total_usable
    min_util_rounded: float | None = math.ceil(min_util * 100) / 100
    if min_util_rounded is not None and min_util_rounded > 1:
        problems.append(f"even the whole card cannot hold the model with a {max_len}-token "
                        "context on one GPU" + (" per rank" if tp > 1 else ""))
        min_util_rounded = None
    footprint = requested + context + (0 if graphs_in_budget else graphs)
    if footprint > gpu_mib * MIB:
        problems.append(f"needs {gib(footprint)} GiB per GPU, the card has {gib(gpu_mib * MIB)}")
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
    return VLLMEstimate(
        engine="vllm", model=facts.key, gpu_mib=gpu_mib, gpu_usable_gib=gib(total_usable), tp=tp,
        gpu_memory_utilization=round(util, 4), max_model_len=max_len, kv_cache_dtype=kv_dtype,
        weights_gib=gib(weights), activation_gib=gib(activation), non_torch_gib=gib(non_torch),
        cuda_graph_gib=gib(graphs), cuda_context_gib=gib(context), requested_gib=gib(requested),
        kv_cache_gib=gib(pool_pos), kv_bytes_per_token=int(token_bytes), kv_tokens=kv_tokens,
        kv_blocks=blocks, max_concurrency=round(concurrency, 2), total_gib=gib(footprint),
        free_needed_gib=gib(requested + context), min_gpu_memory_utilization=min_util_rounded,
        fits=not problems, version=version, calibrated=calibrated, problems=problems,
        notes=notes)


def utilization_for(facts: ModelFacts, *, gpu_mib: int, args: VLLMArgs, sequences: float = 1.0,
                    headroom: float = 0.0, calibration: dict[str, Any] | None = None) -> float:
    """Smallest --gpu-memory-utilization that serves `sequences` x max_model_len tokens."""
    probe = vllm_estimate(facts, gpu_mib=gpu_mib, args=VLLMArgs(**{**asdict(args),
                                                                 "gpu_memory_utilization": 1.0,
                                                                 "kv_cache_memory_bytes": None}),
                          calibration=calibration)
    usable = cuda_total_mib(gpu_mib) * MIB
    fixed = (probe.weights_gib + probe.activation_gib + probe.non_torch_gib +
             (probe.cuda_graph_gib if version_tuple(probe.version) >= (0, 21) else 0)) * GIB
    elem = KV_CACHE_BYTES.get(args.kv_cache_dtype or "auto") or dtype_bytes(facts, args.dtype)
    per_seq = kv_per_sequence_bytes(facts, probe.tp, elem, probe.max_model_len)
    need = fixed + per_seq * sequences + headroom
    return math.ceil(need / usable * 100) / 100


# ---------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------

@dataclass
class LlamaCppArgs:
    ctx: int = 4096                 # -c: total context across all slots
    n_gpu_layers: int = 999         # -ngl
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    parallel: int = 1               # -np
    ubatch: int = 512
    flash_attn: bool = True
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
            args.ctx = parse_tokens(value())
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
class LlamaCppEstimate(_EstimateResult):
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
        total, source = estimate_weight_bytes(facts)
        embd = facts.vocab_size * facts.hidden_size * dtype_bytes(facts)
        body = max(0.0, total - embd * (1 if facts.tie_embeddings else 2))
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
    vocab = facts.vocab_size or 32000
    ub = args.ubatch
    compute = vocab * ub * 4 + ub * (facts.hidden_size * 16 + facts.intermediate_size * 8)
    if not args.flash_attn:
        compute += facts.num_heads * min(ctx, ctx // max(1, args.parallel) + ub) * ub * 4
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
