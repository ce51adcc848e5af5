"""`gpumod service add` with bad input: one-line error, non-zero exit, nothing stored."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import run_cli


def _names() -> list[str]:
    result = run_cli("service", "list", "--json", prog="gpumod")
    assert result.code == 0, result.output
    return [row["name"] for row in json.loads(result.stdout)]


@pytest.mark.parametrize(("extra", "code", "fragment"), [
    (["--args", "'unbalanced"], 2, "No closing quotation"),
    (["--gpus", "-1"], 2, "invalid GPU index -1"),
    (["--gpus", "0,0"], 2, "GPU index repeated"),
    (["--vram-mib", "-5"], 2, "--vram-mib"),
    (["--vram-mib", "0"], 2, "--vram-mib"),
    (["--port", "0"], 2, "--port"),
    (["--container-port", "0"], 2, "--container-port"),
    (["--bind", "1.2.3.4"], 2, "invalid bind address '1.2.3.4'"),
    (["--env", "A B=1"], 2, "invalid environment variable name"),
    (["--env", "HF_TOKEN=hf_supersecretvalue"], 2, "HF_TOKEN is a secret"),
    (["--env", "pi_api_key=supersecretvalue"], 2, "is a secret"),
])
def test_bad_service_add_input_is_refused_and_stores_nothing(extra, code, fragment):
    assert run_cli("service", "add", "keep", "--engine", "vllm", "--model", "a/b",
                   prog="gpumod").code == 0
    result = run_cli("service", "add", "bad", "--engine", "vllm", "--model", "a/b", *extra,
                     prog="gpumod")
    assert result.code == code, result.output
    assert fragment in result.stderr
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert "supersecretvalue" not in result.output
    assert _names() == ["keep"]


def test_good_values_of_the_same_options_are_stored():
    result = run_cli("service", "add", "ok", "--engine", "vllm", "--model", "a/b",
                     "--args", "--max-model-len '4096'", "--bind", "0.0.0.0",
                     "--vram-mib", "2000", "--env", "FOO_1=bar", prog="gpumod")
    assert result.code == 0, result.output
    (row,) = json.loads(run_cli("service", "list", "--json", prog="gpumod").stdout)
    assert row["args"] == ["--max-model-len", "4096"]


def test_relative_model_paths_are_refused_like_pi_start():
    from tests.support.cli import run_cli

    for model in ("relative.gguf", "./models/x.gguf", "../x"):
        result = run_cli("service", "add", "coder", "--engine", "llamacpp", "--model", model,
                         prog="gpumod")
        assert result.code == 2, (model, result.output)
        assert result.stderr.startswith("error: ")
    assert run_cli("service", "list", "--json", prog="gpumod").stdout.strip() == "[]"
