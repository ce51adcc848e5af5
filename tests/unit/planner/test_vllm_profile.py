"""What vLLM's profile run costs per version and card, and tensor x pipeline parallel."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.planner import estimate as E
from gpumod.planner.estimate.vllm_profile import batch_limits
from gpumod.planner.facts import facts_from_config
from gpumod.planner.gputable import card
from tests.support.models import config

H100, H100_NAME = 81559, "NVIDIA H100 80GB HBM3"


def facts(name):
    return facts_from_config(config(name), key=name)


@pytest.mark.parametrize(("gpu", "version", "length", "expected"), [
    ("NVIDIA H100 80GB HBM3", "0.19", 8192, (1024, 8192)),          # >= 70 GiB: big defaults
    ("NVIDIA A100-SXM4-80GB", "0.19", 8192, (256, 2048)),           # ... but not on an A100
    ("NVIDIA GeForce RTX 4090", "0.11", 8192, (256, 2048)),
    ("NVIDIA GeForce RTX 3090", "0.6.4", 20000, (256, 20000)),      # V0: the whole prefill
    ("NVIDIA GeForce RTX 3090", "0.6.4", 40000, (256, 512)),        # V0 chunked above 32K
    ("NVIDIA GeForce RTX 4090", "0.7.2", 131072, (256, 2048)),
])
def test_batch_defaults_per_version_and_card(gpu, version, length, expected):
    seqs, tokens, _ = batch_limits(version, card(gpu, 0), length, None, None)
    assert (seqs, tokens) == expected
    assert batch_limits(version, card(gpu, 0), length, 64, 4096)[:2] == (64, 4096)


def estimate(name, version, util, length, *, tp=1, pp=1, gpu_mib=H100, gpu=H100_NAME,
             weights=None):
    cal = {"actual": {"weights_gib": weights}} if weights else None
    return E.vllm_estimate(facts(name), gpu_mib=gpu_mib, gpu_name=gpu, calibration=cal,
                           args=E.VLLMArgs(tp=tp, pp=pp, gpu_memory_utilization=util,
                                           max_model_len=length, version=version))


@pytest.mark.parametrize(("version", "kv"), [("0.15.0", 41.94), ("0.16.0", 41.94),
                                             ("0.17.0", 45.34), ("0.18.0", 45.23)])
def test_the_sampler_warm_up_moves_with_the_version(version, kv):
    """Qwen3-14B on one H100 (llm-d-planner's version sweep): the logprobs warm-up of
    0.11-0.16 takes 3.4 GiB that 0.17 gives back to the KV cache."""
    e = estimate("Qwen__Qwen3-14B", version, 0.95, 8192)
    assert e.kv_cache_gib == pytest.approx(kv, abs=0.15)


def test_long_context_on_a_consumer_card_with_the_v0_engine():
    """Llama-3.1-8B on an RTX 3090 (vllm-project/vllm#10517): the V0 engine profiles the
    whole 20000/29000-token prefill, so the longer context leaves less KV cache."""
    kv20 = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.6.4", 0.9, 20000,
                    gpu_mib=24576, gpu="NVIDIA GeForce RTX 3090").kv_cache_gib
    kv29 = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.6.4", 0.9, 29000,
                    gpu_mib=24576, gpu="NVIDIA GeForce RTX 3090").kv_cache_gib
    assert kv20 == pytest.approx(3.81, abs=0.15) and kv29 == pytest.approx(2.89, abs=0.15)


def test_tensor_parallel_nccl_memory_depends_on_the_board():
    sxm = estimate("Qwen__Qwen2.5-7B-Instruct", "0.19", 0.95, 8192, tp=2)
    pcie = estimate("Qwen__Qwen2.5-7B-Instruct", "0.19", 0.95, 8192, tp=2,
                    gpu="NVIDIA H100 PCIe")
    assert sxm.non_torch_gib == pytest.approx(2.06, abs=0.1)     # the log: 2.06 GiB
    assert pcie.non_torch_gib < 0.5 and pcie.kv_cache_gib > sxm.kv_cache_gib + 1.5
    r14 = E.vllm_estimate(facts("deepseek-ai__DeepSeek-R1-Distill-Qwen-14B"), gpu_mib=24564,
                          gpu_name="NVIDIA GeForce RTX 4090",
                          args=E.VLLMArgs(tp=2, gpu_memory_utilization=0.98, version="0.7.2"))
    assert r14.kv_cache_gib == pytest.approx(8.69, abs=0.3)       # vllm-project/vllm#13061


def test_cuda_graphs_come_out_of_the_budget_from_0_21():
    before = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.20", 0.9, 8192)
    after = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.21", 0.9, 8192)
    assert after.kv_cache_gib == pytest.approx(before.kv_cache_gib - before.cuda_graph_gib,
                                               abs=0.02)
    assert after.total_gib < before.total_gib     # before 0.21 the graphs came on top


def test_hybrid_allocator_pads_sliding_groups():
    """Gemma 3 27B: 10 full + 52 sliding layers take 7 groups of 10 (llm-d: 36560 tokens)."""
    e = estimate("google__gemma-3-27b-it", "0.19", 0.95, 8192, weights=51.45)
    assert e.kv_tokens == pytest.approx(36560, rel=0.01)


def test_pipeline_stages_split_layers_and_the_tightest_stage_decides():
    """Llama-3.1-8B with two stages on H100s (llm-d: rank 0 7.51 GiB, 66.54 GiB KV;
    the engine's pool 1,075,312 tokens)."""
    e = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.19", 0.95, 8192, pp=2)
    first, last = e.stages
    assert first["weights_gib"] == pytest.approx(7.51, abs=0.05)
    assert first["kv_cache_gib"] == pytest.approx(66.54, abs=0.3)
    assert e.kv_tokens == min(first["kv_tokens"], last["kv_tokens"]) == last["kv_tokens"]
    assert e.kv_tokens == pytest.approx(1075312, rel=0.01)
    assert last["activation_gib"] > first["activation_gib"]   # the sampler runs on the last
    # tensor x pipeline parallel: 2 x 2 GPUs
    both = estimate("meta-llama__Llama-3.1-8B-Instruct", "0.19", 0.95, 8192, tp=2, pp=2)
    assert both.weights_gib == pytest.approx(e.weights_gib / 2, rel=0.05)
    with pytest.raises(UsageError, match="needs 4 GPUs"):
        E.vllm_estimate(facts("meta-llama__Llama-3.1-8B-Instruct"), gpu_mib=H100, gpu_count=2,
                        args=E.VLLMArgs(tp=2, pp=2))


def test_pipeline_flag_is_read_from_engine_args():
    a = E.parse_vllm_args(["-tp", "8", "--pipeline-parallel-size=2"])
    assert (a.tp, a.pp) == (8, 2) and a.setup_key().endswith(";pp=2")
