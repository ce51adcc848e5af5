"""`gpumod model estimate` refuses nonsense sizes before it looks the model up."""

from __future__ import annotations

import pytest

from tests.support.cli import run_cli


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--tp", "0"], "--tp"),
    (["--max-model-len", "0"], "--max-model-len '0' is out of range"),
    (["--max-model-len", "-5"], "invalid --max-model-len '-5'"),
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--engine", "llamacpp", "--parallel", "0"], "--parallel"),
    (["--engine", "llamacpp", "--n-gpu-layers", "-3"], "--n-gpu-layers"),
])
def test_bad_estimate_sizes_are_usage_errors(extra, fragment, monkeypatch):
    # Unreachable hub: were the value not checked first, this would be exit 5 (or worse).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli("model", "estimate", "Qwen/Qwen3-8B", "--gpu", "H100 80GB", *extra,
                     prog="gpumod")
    assert result.code == 2, result.output
    assert fragment in result.stderr
    assert "internal error" not in result.output
