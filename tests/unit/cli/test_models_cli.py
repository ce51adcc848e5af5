"""`gpumod models`: known models and which fit the target host."""

from __future__ import annotations

import json

from gpumod.hosts.model import GPU, Host
from gpumod.ops import hosts as hostops
from gpumod.store.db import open_store
from tests.support.cli import run_cli


def test_models_on_a_cpu_only_local_host():
    result = run_cli("models", "--json")
    assert result.code == 0
    data = json.loads(result.stdout)
    fits = {m["id"]: m["fits"] for m in data["models"]}
    assert fits["Triangle104/SmolLM2-135M-Instruct-Q4_K_M-GGUF"] is True
    assert fits["Qwen/Qwen2.5-0.5B-Instruct"] is False
    table = run_cli("models")
    assert "SmolLM2" in table.stdout and "Kimi" not in table.stdout
    assert "Kimi" in run_cli("models", "--all").stdout


def test_models_for_an_8x_h200_pod():
    store = open_store()
    hostops.save_host(store, Host(name="big", kind="ssh", ssh_command="ssh root@10.1.1.1",
                                  root="/root/.gpumod",
                                  gpus=tuple(GPU(i, f"u{i}", "NVIDIA H200", 143771)
                                             for i in range(8))), replace=False)
    data = json.loads(run_cli("models", "--pod", "big", "--json").stdout)
    rows = {m["id"]: m for m in data["models"]}
    assert rows["zai-org/GLM-4.5"]["fits"] and rows["zai-org/GLM-4.5"]["config"] == "8x H200"
    assert rows["zai-org/GLM-4.5-FP8"]["config"] == "4x H200"
    assert not rows["moonshotai/Kimi-K2-Instruct"]["fits"]


def test_models_unknown_pod():
    result = run_cli("models", "--pod", "nope")
    assert result.code == 3
