from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.planner import estimate as E
from gpumod.planner.facts import facts_from_config, facts_from_gguf
from tests.support.models import config

from .test_facts import write_gguf

H100 = 81559


def facts(name):
    return facts_from_config(config(name), key=name)


def test_kv_bytes_per_token_gqa_and_fp8():
    f = facts("meta-llama__Llama-3.1-8B-Instruct")
    e = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(max_model_len=8192))
    assert e.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2            # 131072
    e8 = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(max_model_len=8192,
                                                          kv_cache_dtype="fp8"))
    assert e8.kv_bytes_per_token == e.kv_bytes_per_token // 2
    assert e8.kv_tokens == pytest.approx(2 * e.kv_tokens, rel=0.001)


def test_kv_heads_replicated_when_tp_exceeds_them():
    f = facts("meta-llama__Llama-3.3-70B-Instruct")                 # 8 KV heads
    e8 = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=8, max_model_len=8192))
    assert e8.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2
    f.num_heads = 64
    f.num_kv_heads = 4        # tp 8 > 4 kv heads: still one head per rank, not half
    e = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=8, max_model_len=8192))
    assert e.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2
    assert any("replicated" in n for n in e.notes)


def test_mla_kv_no_factor_two():
    f = facts("deepseek-ai__DeepSeek-V3")
    e = E.vllm_estimate(f, gpu_mib=143771, args=E.VLLMArgs(tp=8, max_model_len=16384))
    assert e.kv_bytes_per_token == (512 + 64) * 61 * 2


def test_sliding_window_layers_capped():
    f = facts("google__gemma-2-9b-it")
    e = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(gpu_memory_utilization=0.95,
                                                         max_model_len=8192))
    full_only = e.kv_cache_gib * 2**30 / (42 * 8192 * 8192)
    assert e.max_concurrency > full_only * 1.3      # half the layers stop at 4096 tokens


def test_matches_vllm_019_log_llama_8b():
    """vLLM 0.19 on H100 (llm-d-planner accuracy logs): weights 14.99, KV 58.11 GiB."""
    f = facts("meta-llama__Llama-3.1-8B-Instruct")
    e = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(gpu_memory_utilization=0.95,
                                                         max_model_len=16384))
    assert e.weights_gib == pytest.approx(14.99, rel=0.01)
    assert e.kv_cache_gib == pytest.approx(58.11, rel=0.02)
    assert e.kv_tokens == pytest.approx(476016, rel=0.02)
    assert e.requested_gib == pytest.approx(75.23, abs=0.02)


def test_tp_splits_weights_and_adds_nccl_overhead():
    f = facts("Qwen__Qwen2.5-7B-Instruct")
    e1 = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=1, gpu_memory_utilization=0.95))
    e2 = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=2, gpu_memory_utilization=0.95))
    assert e2.weights_gib == pytest.approx(e1.weights_gib / 2, rel=0.02)
    assert e2.non_torch_gib > 1.5 > e1.non_torch_gib


def test_min_utilization_serves_one_sequence():
    f = facts("meta-llama__Llama-3.1-8B-Instruct")
    args = E.VLLMArgs(max_model_len=32768)
    u = E.utilization_for(f, gpu_mib=H100, args=args)
    at = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(max_model_len=32768,
                                                          gpu_memory_utilization=u))
    below = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(max_model_len=32768,
                                                             gpu_memory_utilization=u - 0.02))
    assert at.fits and at.max_concurrency >= 1
    assert not below.fits
    assert at.min_gpu_memory_utilization == u


def test_too_big_for_the_card():
    f = facts("meta-llama__Llama-3.3-70B-Instruct")
    e = E.vllm_estimate(f, gpu_mib=24564, args=E.VLLMArgs(max_model_len=8192))
    assert not e.fits and e.problems and e.min_gpu_memory_utilization is None


def test_bad_arguments():
    f = facts("meta-llama__Llama-3.1-8B-Instruct")
    with pytest.raises(UsageError, match=r"outside \(0, 1\]"):
        E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(gpu_memory_utilization=0))
    with pytest.raises(UsageError, match="beyond"):
        E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(max_model_len=200000))
    with pytest.raises(UsageError, match="needs 4 GPUs"):
        E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=4), gpu_count=2)
    with pytest.raises(UsageError, match="does not divide"):
        E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(tp=3))
    with pytest.raises(UsageError):
        E.parse_tokens("lots")


def test_parse_args_and_tokens():
    a = E.parse_vllm_args(["--tensor-parallel-size", "2", "--max-model-len=32k",
                           "--gpu-memory-utilization", "0.5", "--kv-cache-dtype", "fp8",
                           "--enforce-eager"])
    assert (a.tp, a.max_model_len, a.gpu_memory_utilization, a.kv_cache_dtype) == \
        (2, 32768, 0.5, "fp8")
    assert a.enforce_eager
    b = E.parse_llamacpp_args(["-c", "8192", "-ngl", "20", "-ctk", "q8_0", "-ctv", "q8_0",
                               "-np", "4"])
    assert (b.ctx, b.n_gpu_layers, b.cache_type_k, b.parallel) == (8192, 20, "q8_0", 4)


def test_calibration_replaces_estimated_parts():
    f = facts("meta-llama__Llama-3.1-8B-Instruct")
    cal = {"actual": {"weights_gib": 16.0, "activation_gib": 3.0}, "created_at": "now"}
    e = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(gpu_memory_utilization=0.9),
                        calibration=cal)
    base = E.vllm_estimate(f, gpu_mib=H100, args=E.VLLMArgs(gpu_memory_utilization=0.9))
    assert e.calibrated and e.weights_gib == 16.0
    assert e.kv_cache_gib == pytest.approx(base.kv_cache_gib - (16.0 - base.weights_gib)
                                           - (3.0 - base.activation_gib), abs=0.02)


def test_llamacpp_gguf_offload_and_cache_types(tmp_path):
    p = tmp_path / "tiny.gguf"
    write_gguf(p, n_layers=4)
    f = facts_from_gguf(p)
    full = E.llamacpp_estimate(f, gpu_mib=24564, args=E.LlamaCppArgs(ctx=4096))
    layer = f.gguf_layer_bytes[0]
    assert full.weights_bytes == 4 * layer + f.gguf_output_bytes + 256
    half = E.llamacpp_estimate(f, gpu_mib=24564, args=E.LlamaCppArgs(ctx=4096, n_gpu_layers=2))
    assert half.layers_offloaded == 2 and half.kv_cache_bytes == full.kv_cache_bytes // 2
    assert half.weights_bytes == 2 * layer
    # KV: 4 layers x 4096 cells x 2 kv heads x (16 + 16) dims x 2 bytes
    assert full.kv_cache_bytes == 4 * 4096 * 2 * 32 * 2
    q8 = E.llamacpp_estimate(f, gpu_mib=24564, args=E.LlamaCppArgs(ctx=4096, cache_type_k="q8_0",
                                                                   cache_type_v="q8_0"))
    assert q8.kv_cache_bytes == pytest.approx(full.kv_cache_bytes * 34 / 64, rel=0.001)
    with pytest.raises(UsageError):
        E.llamacpp_estimate(f, gpu_mib=24564, args=E.LlamaCppArgs(cache_type_k="q9"))


def test_llamacpp_real_model_from_config_fits_or_not():
    f = facts("Qwen__Qwen3-8B")
    e = E.llamacpp_estimate(f, gpu_mib=24564, args=E.LlamaCppArgs(ctx=32768))
    # 36 layers x 32768 x 8 heads x 256 x 2 bytes = 4.5 GiB of KV
    assert e.kv_cache_gib == pytest.approx(4.5, abs=0.01)


def test_negative_ngl_in_engine_args_means_all_layers():
    from gpumod.planner.estimate import parse_llamacpp_args

    assert parse_llamacpp_args(["-ngl", "-1"]).n_gpu_layers == parse_llamacpp_args(
        ["-ngl", "all"]).n_gpu_layers
    assert parse_llamacpp_args(["-ngl", "12"]).n_gpu_layers == 12
