from __future__ import annotations

from gpumod.planner import calibration as C
from gpumod.planner import estimate as E
from gpumod.planner.facts import facts_from_config
from gpumod.store import calibrations
from tests.support.models import FIXTURES, config

# Lines as vLLM 0.19 writes them (from llm-d-incubation/llm-d-planner's accuracy logs)
# and as llama-server writes its buffer lines.
VLLM_019 = (FIXTURES / "logs" / "vllm-0.19-llama-3.1-8b.log").read_text()

LLAMA = (FIXTURES / "logs" / "llama-server-qwen3-8b.log").read_text()


def test_parse_vllm_lines():
    got = C.parse_vllm_log(VLLM_019)
    assert got == {"engine_version": "0.19.0", "weights_gib": 14.99, "kv_cache_gib": 58.11,
                   "kv_tokens": 476016, "max_concurrency": 29.05, "cuda_graph_gib": 0.91,
                   "activation_gib": 1.89, "non_torch_gib": 0.25}


def test_parse_llamacpp_lines():
    got = C.parse_llamacpp_log(LLAMA)
    assert got["weights_gib"] == round(4455.33 / 1024, 3)
    assert got["kv_cache_gib"] == round(1152 / 1024, 3)
    assert got["compute_gib"] == round(304.75 / 1024, 3)


def test_parse_nothing():
    assert C.parse_log("vllm", "no memory lines here") == {}


def test_record_and_reuse_in_next_estimate(store):
    f = facts_from_config(config("meta-llama__Llama-3.1-8B-Instruct"), key="meta-llama/x")
    args = E.VLLMArgs(gpu_memory_utilization=0.95, max_model_len=16384)
    first = E.vllm_estimate(f, gpu_mib=81559, args=args)
    actual = C.parse_vllm_log(VLLM_019)
    actual["weights_gib"] = 15.5        # pretend the engine measured more
    actual["process_mib"] = 77000
    calibrations.record(store, model=f.key, engine="vllm", engine_version="0.19.0",
                        gpu_name="H100 80GB", args_key=args.setup_key(),
                        estimate=first.to_json(), actual=actual)
    rows = calibrations.for_setup(store, model=f.key, engine="vllm", gpu_name="H100 80GB",
                                  args_key=args.setup_key())
    cal = C.pick_calibration(rows, "0.19.0")
    assert cal["actual"]["process_mib"] == 77000
    second = E.vllm_estimate(f, gpu_mib=81559, args=args, calibration=cal)
    assert second.weights_gib == 15.5 and second.calibrated
    assert second.kv_cache_gib < first.kv_cache_gib
    # another engine version or another setup does not pick it up
    assert C.pick_calibration(rows, "0.21.1") is None
    assert calibrations.for_setup(store, model=f.key, engine="vllm", gpu_name="H100 80GB",
                                  args_key="tp=2") == []
    assert len(calibrations.for_model(store, f.key)) == 1
