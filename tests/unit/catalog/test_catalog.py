"""The known-model catalog and the one rule that picks a configuration."""

from __future__ import annotations

import pytest

from gpumod.catalog.models import (
    find_model,
    gpu_words,
    load_catalog,
    parse_catalog,
    require_selection,
    select_config,
    version_ok,
)
from gpumod.errors import ConfigError, UsageError
from gpumod.hosts.model import GPU


def gpus(name: str, n: int) -> list[GPU]:
    return [GPU(i, f"GPU-{i}", name, 81559) for i in range(n)]


PI_MODELS = {
    "Qwen/Qwen2.5-Coder-32B-Instruct", "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8", "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "openai/gpt-oss-20b", "openai/gpt-oss-120b",
    "zai-org/GLM-4.5", "zai-org/GLM-4.5-FP8", "zai-org/GLM-4.5-Air", "zai-org/GLM-4.5-Air-FP8",
    "moonshotai/Kimi-K2-Instruct",
}


def test_catalog_json_says_what_the_yaml_says():
    """gpumod reads data/models.json; people edit data/models.yaml."""
    import json

    from gpumod.catalog.models import CATALOG_JSON, catalog_from_yaml

    assert json.loads(CATALOG_JSON.read_text()) == catalog_from_yaml(), \
        "data/models.json is out of date: run scripts/gen_catalog_data.py"


def test_catalog_holds_pis_table_and_small_test_models():
    catalog = load_catalog()
    assert set(catalog) >= PI_MODELS
    assert {"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-0.6B"} <= set(catalog)
    gguf = find_model("smollm2-135m")
    assert gguf is not None and gguf.engine == "llamacpp" and gguf.gguf_file.endswith(".gguf")
    kimi = catalog["moonshotai/Kimi-K2-Instruct"]
    assert kimi.min_engine_version == "0.10.0rc1"
    assert kimi.configs[0].gpus == 16 and "kimi_k2" in kimi.configs[0].args


def test_gpu_words_do_not_confuse_h20_and_h200():
    assert "H100" in gpu_words("NVIDIA H100 80GB HBM3")
    model = load_catalog()["Qwen/Qwen3-Coder-480B-A35B-Instruct"]  # written for H200, H20
    assert model.configs[0].matches_type("NVIDIA H200")
    assert model.configs[0].matches_type("NVIDIA H20")
    assert not load_catalog()["zai-org/GLM-4.5-FP8"].configs[1].matches_type("NVIDIA H20")


def test_selection_prefers_the_gpu_type_then_the_smallest_count():
    glm = load_catalog()["zai-org/GLM-4.5-FP8"]  # 8x H100 or 4x H200
    on_h200 = select_config(glm, gpus("NVIDIA H200", 8))
    assert (on_h200.config.gpus, on_h200.type_matched) == (4, True)
    on_h100 = select_config(glm, gpus("NVIDIA H100 80GB HBM3", 8))
    assert (on_h100.config.gpus, on_h100.type_matched) == (8, True)
    qwen = load_catalog()["Qwen/Qwen2.5-Coder-32B-Instruct"]
    assert select_config(qwen, gpus("NVIDIA H100", 2)).config.gpus == 1
    assert select_config(qwen, gpus("NVIDIA H100", 2), requested=2).config.gpus == 2


def test_other_gpu_type_falls_back_but_says_so():
    qwen = load_catalog()["Qwen/Qwen2.5-Coder-32B-Instruct"]
    chosen = select_config(qwen, gpus("NVIDIA A100-SXM4-80GB", 1))
    assert chosen is not None and not chosen.type_matched


def test_too_few_gpus_or_unknown_count_is_a_clear_error():
    kimi = load_catalog()["moonshotai/Kimi-K2-Instruct"]
    assert select_config(kimi, gpus("NVIDIA H200", 8)) is None
    with pytest.raises(UsageError, match="does not fit"):
        require_selection(kimi, gpus("NVIDIA H200", 8), None)
    qwen = load_catalog()["Qwen/Qwen2.5-Coder-32B-Instruct"]
    with pytest.raises(UsageError, match="no configuration for 3 GPU"):
        require_selection(qwen, gpus("NVIDIA H100", 4), 3)


def test_cpu_host_gets_the_cpu_config_of_a_gguf_model():
    gguf = find_model("Triangle104/SmolLM2-135M-Instruct-Q4_K_M-GGUF")
    assert select_config(gguf, []).config.gpus == 0
    assert select_config(gguf, gpus("NVIDIA L4", 1)).config.gpus == 1
    assert select_config(load_catalog()["Qwen/Qwen3-0.6B"], []) is None


def test_unknown_model_is_none():
    assert find_model("someone/nothing") is None
    assert find_model("qwen/qwen3-0.6b").id == "Qwen/Qwen3-0.6B"


def test_catalog_typos_are_caught():
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_catalog({"models": [{"id": "a/b", "engine": "vllm", "cfgs": []}]})
    with pytest.raises(ConfigError, match="gpus"):
        parse_catalog({"models": [{"id": "a/b", "engine": "vllm", "configs": [{"gpus": -1}]}]})


def test_versions():
    assert version_ok("0.10.1", "0.10.0rc1") is True
    assert version_ok("0.10.0rc1", "0.10.0") is False
    assert version_ok("0.9.2", "0.10.0") is False
    assert version_ok(None, "0.10.0") is None
