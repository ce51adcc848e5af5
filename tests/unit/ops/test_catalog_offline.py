"""Catalog models are planned with the network off: their facts ship with the package."""

from __future__ import annotations

import json

import pytest

from gpumod.catalog.facts import known_ids
from gpumod.catalog.models import load_catalog
from gpumod.hosts.gpus import GPUUsage
from gpumod.hosts.model import GPU, Host
from gpumod.ops.facts import model_facts
from gpumod.ops.sizing import check_start
from gpumod.ops.sizing import estimate as sizing_estimate
from gpumod.spec import ServiceSpec
from tests.support.cli import run_cli
from tests.support.models import config


@pytest.fixture
def no_network(monkeypatch, hub_offline):
    """HF_HUB_OFFLINE=1 and a Hub client that cannot connect (no recorded answers).

    Returns the URLs anything tried to reach: catalog models must try none.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_offline


def test_every_catalog_model_has_shipped_facts():
    assert {m.id for m in load_catalog().values()} == set(known_ids())


@pytest.mark.parametrize("model_id", known_ids())
def test_catalog_facts_resolve_offline_and_estimate(model_id, store, no_network):
    facts = model_facts(store, model_id)
    assert facts.source == "catalog" and facts.num_layers > 0 and facts.param_count > 0
    assert any("catalog" in n for n in facts.notes)
    known = load_catalog()[model_id]
    if known.engine == "llamacpp":
        e = sizing_estimate(store, model_id, engine="llamacpp", args=["-c", "4096"],
                            gpu_mib=24564, gpu_name="RTX 4090")
        assert 0 < e["weights_gib"] < 1 and e["kv_cache_gib"] > 0
        assert no_network == []
        return
    cfg = known.configs[0]
    e = sizing_estimate(store, model_id, engine="vllm", args=list(cfg.args), gpu_mib=143771,
                        gpu_name="NVIDIA H200")
    # the estimate is for one of cfg.gpus GPUs (tensor parallel): weights split accordingly
    per_gpu = e["weights_gib"] * max(1, e["tp"])
    assert per_gpu > facts.param_count / 2**30 * 0.4          # FP8 / MXFP4 halve or quarter it
    assert e["kv_bytes_per_token"] > 0
    assert no_network == []


def test_catalog_facts_agree_with_the_models_config():
    """gpt-oss-20b's shipped facts read as its config.json does."""
    from gpumod.planner.facts import catalog_facts, facts_from_config

    shipped = catalog_facts("openai/gpt-oss-20b")
    from_config = facts_from_config(config("openai__gpt-oss-20b"), key="openai/gpt-oss-20b")
    assert shipped.attention_layer_types() == from_config.attention_layer_types()
    assert (shipped.num_kv_heads, shipped.head_dim, shipped.num_experts) == \
        (from_config.num_kv_heads, from_config.head_dim, from_config.num_experts)


def test_model_estimate_cli_offline(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    result = run_cli("model", "estimate", "Qwen/Qwen3-0.6B", "--gpu", "RTX 4090",
                     "--max-model-len", "8192", "--json", prog="gpumod")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "Qwen/Qwen3-0.6B" and data["gpu"] == "RTX 4090"
    assert data["fits"] and data["weights_gib"] > 1
    info = run_cli("model", "info", "Qwen/Qwen3-0.6B", "--json", prog="gpumod")
    assert info.code == 0 and json.loads(info.stdout)["facts"]["source"] == "catalog"
    assert no_network == []
    # a model the catalog does not know still needs the Hub: a clear transport error
    other = run_cli("model", "estimate", "acme/unknown-model", "--gpu", "RTX 4090",
                    prog="gpumod")
    assert other.code == 5 and "Hugging Face" in other.stderr


def test_start_admission_for_a_catalog_model_is_checked_offline(store, no_network):
    h = Host("pod1", "ssh", gpus=(GPU(0, "GPU-0", "NVIDIA GeForce RTX 4090", 24564),),
             engine_env={"vllm_version": "0.19.0"})
    use = [GPUUsage(h.gpus[0], 2048, 24564 - 2048, "550.54")]
    spec = ServiceSpec("chat", "pod1", "vllm", "Qwen/Qwen3-0.6B", 8000, gpus=(0,),
                       args=("--max-model-len", "8192"))
    adm = check_start(store, h, spec, use, force=False)
    assert "--gpu-memory-utilization" in adm.args
    assert not any("no VRAM check" in n for n in adm.notes) and no_network == []
