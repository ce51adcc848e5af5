from __future__ import annotations

import pytest

from gpumod.errors import CapacityError, UsageError
from gpumod.hosts.gpus import GPUUsage
from gpumod.hosts.model import GPU
from gpumod.planner.facts import facts_from_config
from gpumod.planner.gputable import cuda_total_mib
from gpumod.planner.placement import GPUState, Neighbour, ServiceRequest, place, plan_start
from tests.support.models import config

H100, RTX = 81559, 24564


def llama8b():
    return facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key="llama8b")


def qwen8b():
    return facts_from_config(config("Qwen__Qwen3-8B"), key="qwen3-8b")


def test_two_vllm_services_share_one_card_with_whole_card_shares():
    gpus = [GPUState(0, "NVIDIA H100 80GB HBM3", H100)]
    reqs = [ServiceRequest("chat", "vllm", llama8b(), context=16384),
            ServiceRequest("code", "vllm", qwen8b(), context=16384)]
    p = place(gpus, reqs)
    assert p.fits
    utils = [a.settings["gpu_memory_utilization"] for a in p.assignments]
    # each is a share of the whole card; together they stay below 1 with room for contexts
    assert sum(utils) < 0.97 and all(0.2 < u < 0.7 for u in utils)
    assert p.gpus[0].free_after_mib >= p.gpus[0].margin_mib
    assert "--gpu-memory-utilization" in p.assignments[0].engine_args


def test_second_service_must_fit_in_free_memory_at_its_start():
    # 60 GiB already used by someone else: a 0.9 share cannot start
    gpus = [GPUState(0, "H100", H100, used_mib=60 * 1024)]
    req = ServiceRequest("chat", "vllm", llama8b(), context=8192, gpu_memory_utilization=0.9)
    p = place(gpus, [req])
    assert not p.fits and "free" in p.reason


def test_overflow_then_alternatives_ranked():
    gpus = [GPUState(0, "RTX 4090", RTX)]
    req = ServiceRequest("chat", "vllm", llama8b(), context=131072)
    p = place(gpus, [req])
    assert not p.fits
    kinds = [a.kind for a in p.alternatives]
    assert kinds[0] == "shorter-context"
    assert p.alternatives[0].changes["context"] < 131072
    assert [a.rank for a in p.alternatives] == list(range(1, len(p.alternatives) + 1))
    # applying the first alternative really fits
    ok = place(gpus, [ServiceRequest("chat", "vllm", llama8b(),
                                     context=p.alternatives[0].changes["context"])])
    assert ok.fits


def test_fits_only_with_fp8_kv_cache():
    gpus = [GPUState(0, "RTX 4090", RTX)]
    f = llama8b()
    # find a context that fails with bf16 KV but fits with fp8
    base = ServiceRequest("chat", "vllm", f, context=32768, min_concurrency=2)
    p = place(gpus, [base])
    assert not p.fits
    assert any(a.kind.startswith("fp8-kv") or a.kind == "shorter-context"
               for a in p.alternatives)
    p8 = place(gpus, [ServiceRequest("chat", "vllm", f, context=16384, kv_cache_dtype="fp8",
                                     min_concurrency=2)])
    assert p8.fits


def test_tp_uses_two_gpus_and_pins():
    gpus = [GPUState(0, "H100", H100), GPUState(1, "H100", H100), GPUState(2, "H100", H100)]
    f70 = facts_from_config(config("meta-llama__Llama-3.3-70B-Instruct"), key="70b")
    p = place(gpus, [ServiceRequest("big", "vllm", f70, tp=2, context=8192),
                     ServiceRequest("small", "vllm", llama8b(), context=8192, pinned_gpus=(2,))])
    assert p.fits
    assert len(p.assignment("big").gpus) == 2 and p.assignment("small").gpus == (2,)
    with pytest.raises(UsageError, match="needs 4 GPUs"):
        place(gpus, [ServiceRequest("big", "vllm", f70, tp=4)])
    with pytest.raises(UsageError, match="does not exist"):
        place(gpus, [ServiceRequest("x", "vllm", llama8b(), pinned_gpus=(7,))])


def test_llamacpp_and_generic_budget():
    gpus = [GPUState(0, "RTX 4090", RTX)]
    p = place(gpus, [ServiceRequest("emb", "command", vram_mib=3000),
                     ServiceRequest("chat", "llamacpp", qwen8b(), context=8192,
                                    cache_type_k="q8_0", cache_type_v="q8_0")])
    a = p.assignment("chat")
    assert a.settings["ctx"] == 8192 and a.settings["cache_type_k"] == "q8_0"
    assert "-ngl" in a.engine_args
    assert p.gpus[0].planned_mib == 3000 + a.per_gpu_mib


def test_sleeping_neighbour_offered_as_time_share():
    gpus = [GPUState(0, "RTX 4090", RTX, used_mib=12000)]
    neighbours = [Neighbour("rerank", (0,), 12000, "l2", weights_mib=8000)]
    req = ServiceRequest("chat", "vllm", qwen8b(), context=8192, gpu_memory_utilization=0.8)
    p = place(gpus, [req], neighbours=neighbours)
    assert not p.fits
    assert any(a.kind == "sleep" and "rerank" in a.description for a in p.alternatives)


def usage(index, total, used):
    return GPUUsage(GPU(index, f"GPU-{index}", "NVIDIA GeForce RTX 4090", total), used,
                    total - used, "550.0")


def test_plan_start_returns_settings_or_raises_with_alternatives():
    p = plan_start([usage(0, RTX, 400)], ServiceRequest("chat", "vllm", qwen8b(), context=8192))
    a = p.assignment("chat")
    util = a.settings["gpu_memory_utilization"]
    assert util * cuda_total_mib(RTX) <= cuda_total_mib(RTX) - 400
    with pytest.raises(CapacityError) as err:
        plan_start([usage(0, RTX, 400)], ServiceRequest("chat", "vllm", llama8b(),
                                                        context=131072))
    assert "does not fit" in err.value.message
    assert "[1]" in (err.value.hint or "") and "--force" in err.value.hint


def test_no_gpu_is_a_capacity_error():
    with pytest.raises(CapacityError, match="no GPU"):
        place([], [ServiceRequest("x", "command", vram_mib=1)])
