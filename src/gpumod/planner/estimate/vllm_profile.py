"""What vLLM's start-up profile run costs per GPU: the parts of the budget that move.

vLLM sizes its KV pool as ``utilization x CUDA total - weights - activation peak -
non-torch memory`` (and, from 0.21, minus its CUDA graph estimate). Everything
but the weights depends on the engine version, the GPU and the batch limits:

- **batch limits** (``EngineArgs`` defaults, vllm/engine/arg_utils.py): the V1
  engine (default from 0.8) uses ``max_num_batched_tokens`` 8192 and
  ``max_num_seqs`` 1024 for the OpenAI server on cards with at least 70 GiB that
  are not A100s, else 2048 and 256. The V0 engine (before 0.8) has no chunked
  prefill below a 32K context, so it profiles ``max(max_model_len, 2048)`` tokens
  at once (512 or 2048 with chunked prefill).
- **activation peak**: the dummy forward over ``max_num_batched_tokens`` tokens
  (the dense MLP's gate/up/act intermediates, ``tokens x (3 x intermediate/tp + 3 x
  hidden) x 2`` bytes; plus the fused-MoE workspace), or the dummy sampler run over
  ``min(max_num_seqs, tokens) x vocab`` logits in fp32 with its softmax and sort
  buffers, whichever is larger; plus a fixed base and an encoder allowance for
  multimodal models. vLLM 0.11-0.16 also warmed up logprobs there (about 2.6x the
  sampler bytes of 0.17+).
- **non-torch memory**: NCCL and cuBLAS workspaces; about 2 GiB per rank under
  tensor parallel on NVSwitch boards from 0.18, little elsewhere.
- **CUDA graphs**: captured after the KV pool is sized before 0.21 (outside the
  budget), estimated and subtracted from it from 0.21.

The fitted numbers live in :class:`ProfileConstants`; bench/estimate_accuracy.py
refits them with each model left out and reports the error on the held-out one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpumod.planner.estimate.common import version_tuple
from gpumod.planner.facts import ModelFacts
from gpumod.planner.gputable import GIB, GPUModel

V1_FROM = (0, 8)               # the V1 engine is the default from vLLM 0.8
LOGPROBS_WARMUP = ((0, 11), (0, 16))
GRAPHS_IN_BUDGET_FROM = (0, 21)
BIG_CARD_GIB = 70              # "device_memory >= 70 GiB and not an A100" (arg_utils.py)


@dataclass(frozen=True)
class ProfileConstants:
    """Numbers fitted on public start-up logs (bench/estimate_measurements.csv)."""

    act_base_gib: float = 0.151              # torch.compile and allocator scratch, every model
    sampler_bytes_per_logit: float = 14.4    # fp32 logits + softmax + sort buffers (0.17+)
    logprobs_bytes_per_logit: float = 37.9   # the same with the logprobs warm-up (0.11-0.16)
    multimodal_gib: float = 0.21             # encoder profiling of vision models
    nvswitch_tp_gib: float = 1.87            # NCCL NVLS buffers per rank, tp > 1 (0.18+)


DEFAULT_CONSTANTS = ProfileConstants()


@dataclass
class Profile:
    """The profile run's cost on one GPU (bytes) and the batch limits it used."""

    engine: str                     # "v1" | "v0"
    max_num_seqs: int
    max_num_batched_tokens: int
    activation: float
    non_torch: float
    cuda_graphs: float
    graphs_in_budget: bool
    context: float                  # CUDA context and NCCL set-up: held, outside the budget
    notes: list[str] = field(default_factory=list)


def is_big_card(card: GPUModel) -> bool:
    return card.usable_mib >= BIG_CARD_GIB * 1024 and "a100" not in card.name.lower()


def batch_limits(version: str | None, card: GPUModel, max_model_len: int,
                 max_num_seqs: int | None, max_num_batched_tokens: int | None
                 ) -> tuple[int, int, str]:
    """(max_num_seqs, max_num_batched_tokens, why) as vLLM of this version picks them."""
    v = version_tuple(version)
    if v < V1_FROM:
        seqs = max_num_seqs or 256
        if max_num_batched_tokens:
            return seqs, max_num_batched_tokens, "given"
        if max_model_len > 32768:       # V0 turns chunked prefill on above 32K
            tokens = 2048 if v >= (0, 7) else 512
            return seqs, tokens, f"V0 engine, chunked prefill: {tokens} tokens per step"
        tokens = max(max_model_len, 2048)
        return seqs, tokens, f"V0 engine profiles a whole {tokens}-token prefill"
    big = is_big_card(card)
    seqs = max_num_seqs or (1024 if big else 256)
    tokens = max_num_batched_tokens or (8192 if big else 2048)
    why = "given" if max_num_seqs and max_num_batched_tokens else (
        f"defaults for {'>= 70 GiB cards' if big else 'cards under 70 GiB and A100s'}: "
        f"{tokens} batched tokens, {seqs} sequences")
    return seqs, tokens, why


def forward_bytes(facts: ModelFacts, tp: int, tokens: int) -> float:
    """The dense forward's peak intermediates for one `tokens`-token step (bf16)."""
    inter = facts.moe_intermediate_size if facts.is_moe else facts.intermediate_size
    return tokens * 2 * (3 * inter / tp + 3 * facts.hidden_size)


def moe_workspace_bytes(facts: ModelFacts, tp: int, tokens: int) -> float:
    """The fused-MoE kernel's caches: tokens x top-k x (gate/up + down) rows (bf16)."""
    if not facts.is_moe or facts.quant_method == "mxfp4":   # MXFP4 experts use other kernels
        return 0.0
    i_moe = facts.moe_intermediate_size / tp
    return tokens * facts.experts_per_token * (max(2 * i_moe, facts.hidden_size) + i_moe) * 2


def sampler_bytes(facts: ModelFacts, seqs: int, version: str | None,
                  constants: ProfileConstants) -> float:
    lo, hi = LOGPROBS_WARMUP
    per_logit = (constants.logprobs_bytes_per_logit if lo <= version_tuple(version) <= hi
                 else constants.sampler_bytes_per_logit)
    return seqs * (facts.vocab_size or 32000) * per_logit


def activation_bytes(facts: ModelFacts, *, tp: int, seqs: int, tokens: int,
                     version: str | None, last_stage: bool = True,
                     constants: ProfileConstants = DEFAULT_CONSTANTS) -> float:
    """Torch's peak increase during the profile run on one GPU."""
    forward = forward_bytes(facts, tp, tokens)
    if version_tuple(version) < V1_FROM:
        # V0: no compile scratch; its sampler keeps only the fp32 logits
        logits = min(seqs, tokens) * (facts.vocab_size or 32000) * 4 if last_stage else 0.0
        return max(forward, logits) + moe_workspace_bytes(facts, tp, tokens)
    sampler = sampler_bytes(facts, min(seqs, tokens), version, constants) if last_stage else 0.0
    act = constants.act_base_gib * GIB + max(sampler, forward)
    act += moe_workspace_bytes(facts, tp, tokens)
    if facts.vision_params:
        act += constants.multimodal_gib * GIB
    return act


def non_torch_bytes(*, tp: int, pp: int = 1, version: str | None, card: GPUModel,
                    constants: ProfileConstants = DEFAULT_CONSTANTS) -> float:
    """NCCL/cuBLAS memory allocated outside torch during the profile run, per GPU."""
    v = version_tuple(version)
    if v < V1_FROM:
        return 0.3 * GIB                  # V0 counts the CUDA context here too
    base = 0.25 if v >= (0, 18) else 0.13
    if tp == 1:
        return (min(base, 0.07) if pp > 1 else base) * GIB
    # NVSwitch boards: NCCL NVLS buffers (0.41 GiB measured on 0.11); PCIe cards and
    # boards without P2P: no custom all-reduce buffers either (0.12 GiB on 0.10)
    nvs = constants.nvswitch_tp_gib if v >= (0, 18) else 0.41
    extra = nvs if card.nvswitch else 0.12
    return (base + extra + (0.06 if tp >= 4 else 0.0)) * GIB


def cuda_graph_bytes(facts: ModelFacts, *, tp: int, layers: int, enforce_eager: bool) -> float:
    """CUDA graph pool (captured, or vLLM's estimate of it from 0.21)."""
    if enforce_eager:
        return 0.0
    return (0.5 + 0.012 * layers + (0.3 if tp > 1 else 0.0)) * GIB


def context_bytes(*, tp: int, pp: int, version: str | None, card: GPUModel) -> float:
    """CUDA context and communicator set-up held outside the budget, per GPU."""
    if version_tuple(version) < V1_FROM:
        return 0.0
    if tp * pp == 1:
        return 0.51 * GIB
    return (1.5 if card.nvswitch else 0.6) * GIB


def profile(facts: ModelFacts, *, card: GPUModel, tp: int, pp: int, layers: int,
            max_model_len: int, version: str | None, max_num_seqs: int | None,
            max_num_batched_tokens: int | None, enforce_eager: bool, last_stage: bool = True,
            constants: ProfileConstants = DEFAULT_CONSTANTS) -> Profile:
    seqs, tokens, why = batch_limits(version, card, max_model_len, max_num_seqs,
                                     max_num_batched_tokens)
    v1 = version_tuple(version) >= V1_FROM
    return Profile(
        engine="v1" if v1 else "v0", max_num_seqs=seqs, max_num_batched_tokens=tokens,
        activation=activation_bytes(facts, tp=tp, seqs=seqs, tokens=tokens, version=version,
                                    last_stage=last_stage, constants=constants),
        non_torch=non_torch_bytes(tp=tp, pp=pp, version=version, card=card,
                                  constants=constants),
        cuda_graphs=cuda_graph_bytes(facts, tp=tp, layers=layers, enforce_eager=enforce_eager),
        graphs_in_budget=version_tuple(version) >= GRAPHS_IN_BUDGET_FROM,
        context=context_bytes(tp=tp, pp=pp, version=version, card=card),
        notes=[f"profile run: {why}"])
