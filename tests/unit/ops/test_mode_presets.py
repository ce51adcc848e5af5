"""`gpumod mode create NAME --preset PRESET`: a shipped mode preset made real, all or nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import run_cli

RAG = ("embedding-code", "embedding", "reranker", "chat")


@pytest.fixture
def one_gpu(tmp_path: Path, fake_gpu_state: Path, monkeypatch: pytest.MonkeyPatch,
            gpumod_home: Path) -> dict[str, int]:
    """This box has one fake H100 (nvidia-smi answers from a state file), and the rag
    mode's service presets, as shipped, on ports free right now: the machine is shared,
    so a shipped port may be held by another program. Returns service -> port."""
    import re
    from importlib import resources

    from gpumod.testing import install_shims, write_state
    from tests.support.real import free_port

    write_state(fake_gpu_state, ["h100"])
    bin_dir = install_shims(tmp_path / "bin", gpu_state=fake_gpu_state)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    shipped = resources.files("gpumod.catalog").joinpath("data", "presets", "services")
    folder = gpumod_home / "presets" / "services"
    folder.mkdir(parents=True)
    ports = {}
    for name in RAG:
        ports[name] = free_port()
        text = shipped.joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        text, count = re.subn(r"(?m)^port: \d+$", f"port: {ports[name]}", text)
        assert count == 1, name
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return ports


def gpumod(*args: str):
    return run_cli(*args, prog="gpumod")


def services() -> dict[str, dict]:
    result = gpumod("service", "list", "--json")
    assert result.code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def modes() -> dict[str, dict]:
    result = gpumod("mode", "list", "--json")
    assert result.code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_the_rag_preset_defines_its_services_and_the_mode(one_gpu: dict[str, int]) -> None:
    result = gpumod("mode", "create", "rag", "--preset", "rag")
    assert result.code == 0, result.output
    assert "created mode rag on local: embedding-code, embedding, reranker, chat" in result.stdout
    for name in ("embedding-code", "embedding", "reranker", "chat"):
        assert f"defined {name} from preset {name}" in result.stderr
    mode = modes()["rag"]
    assert mode["services"] == ["embedding-code", "embedding", "reranker", "chat"]
    assert mode["sleep_on_idle"] == ["reranker", "chat"]
    assert mode["description"].startswith("Retrieval pipeline")
    defined = services()
    assert {n: s["port"] for n, s in defined.items()} == one_gpu
    assert defined["embedding"]["model"] == "BAAI/bge-m3"
    assert all(s["gpus"] == [0] for s in defined.values())
    assert defined["reranker"]["depends_on"] == ["embedding"]
    assert defined["chat"]["sleep_mode"] == "l1"


def test_services_already_defined_are_used_as_they_are(one_gpu) -> None:
    port = str(one_gpu["chat"])
    assert gpumod("service", "add", "chat", "--engine", "vllm", "--model", "a/b",
                  "--port", port).code == 0
    result = gpumod("mode", "create", "mine", "--preset", "rag", "--description", "my rag")
    assert result.code == 0, result.output
    assert "defined chat" not in result.stderr
    assert services()["chat"]["model"] == "a/b" and services()["chat"]["port"] == int(port)
    assert modes()["mine"]["description"] == "my rag"


def test_the_blank_preset_makes_an_empty_mode(one_gpu) -> None:
    result = gpumod("mode", "create", "free", "--preset", "blank")
    assert result.code == 0, result.output
    assert modes()["free"]["services"] == [] and services() == {}


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--preset", "nope"], 3, "unknown mode preset 'nope'"),
    (["--preset", "chat"], 3, "unknown mode preset 'chat'"),      # a service preset
    (["--preset", "rag", "--services", "a"], 2, "--preset gives the services"),
    (["--preset", "rag", "--sleep-on-idle", "a"], 2, "--preset gives the services"),
])
def test_bad_input_is_refused_and_nothing_is_stored(one_gpu, args, code, message) -> None:
    result = gpumod("mode", "create", "rag", *args)
    assert result.code == code, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.output
    assert services() == {} and modes() == {}


def test_an_invalid_mode_name_is_refused_before_anything_is_defined(one_gpu) -> None:
    result = gpumod("mode", "create", "bad name", "--preset", "rag")
    assert result.code == 2, result.output
    assert services() == {} and modes() == {}


def test_an_existing_mode_is_kept_and_nothing_is_defined(one_gpu) -> None:
    assert gpumod("mode", "create", "rag", "--preset", "blank").code == 0
    result = gpumod("mode", "create", "rag", "--preset", "rag")
    assert result.code == 4, result.output
    assert "mode 'rag' already exists" in result.stderr
    assert modes()["rag"]["services"] == [] and services() == {}


def test_a_failure_midway_drops_what_this_command_defined(one_gpu: dict[str, int]) -> None:
    """The reranker's preset port is taken: the two services defined before it are dropped
    again, the service that held the port stays, and no mode is recorded."""
    port = one_gpu["reranker"]
    assert gpumod("service", "add", "blocker", "--engine", "vllm", "--model", "a/b",
                  "--port", str(port)).code == 0
    result = gpumod("mode", "create", "rag", "--preset", "rag")
    assert result.code == 4, result.output
    assert f"port {port} on local is already used by blocker" in result.stderr
    assert list(services()) == ["blocker"]
    assert modes() == {}


def test_a_preset_naming_an_unknown_service_defines_nothing(one_gpu, gpumod_home) -> None:
    folder = gpumod_home / "presets" / "modes"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text("kind: mode\nname: mine\nservices: [embedding, ghost]\n")
    result = gpumod("mode", "create", "mine", "--preset", "mine")
    assert result.code == 3, result.output
    assert "lists 'ghost', which is neither a service on local nor a service preset" in \
        result.stderr
    assert services() == {} and modes() == {}
