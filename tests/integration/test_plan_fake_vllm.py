"""`gpumod plan` end to end: the real CLI process against the fake vLLM, scripted to call tools.

The fake vLLM is its own process with vLLM's flags; a JSON script makes it call gpumod's
read-only tools and hand in proposals. The simulator is real: it accepts or rejects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from gpumod.testing.fake_nvidia_smi import write_state
from gpumod.testing.harness import FakeVLLM
from tests.support.models import model_folder
from tests.support.store import define_mode, define_service, register_gpu

PARSERS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def gpumod(args: list[str], env: dict[str, str] | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumod.cli.main", *args],
                          env={**os.environ, **(env or {})}, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": json.dumps(arguments)}


@pytest.fixture
def services(tmp_path: Path) -> None:
    store = open_store()
    register_gpu(store)
    small = model_folder(tmp_path, "Qwen__Qwen3-8B.json")
    large = model_folder(tmp_path, "Qwen__Qwen3-14B.json")
    for name, folder, port, ctx, util in [("chat", small, 8001, "32768", "0.45"),
                                          ("coder", large, 8002, "32768", "0.45"),
                                          ("big", large, 8003, "40960", "0.9")]:
        define_service(store, ServiceSpec(name, "local", "vllm", str(folder), port, args=(
            "--max-model-len", ctx, "--gpu-memory-utilization", util)))
    define_mode(store, "code", ["chat", "coder"])


def serve(tmp_path: Path, turns: list[dict], api_key: str | None = None) -> FakeVLLM:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(turns))
    env = {"FAKE_VLLM_SCRIPT": str(script)}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    gpus = write_state(tmp_path / "planner-llm-gpus.json", ["h100"])  # its own GPU
    return FakeVLLM("Qwen/Qwen3-8B", PARSERS, env=env, log_path=tmp_path / "vllm.log",
                    gpu_state=gpus)


@pytest.fixture
def rejected_then_accepted(tmp_path: Path, services: None) -> Iterator[FakeVLLM]:
    turns = [
        {"content": "", "tool_calls": [call("simulate_mode", mode="code"),
                                       call("model_info", model=str(tmp_path / "models" /
                                                                    "Qwen__Qwen3-14B"))]},
        {"content": "", "tool_calls": [call("propose_plan", mode="code-big",
                                            services=["chat", "coder", "big"],
                                            explanation="add big next to code")]},
        {"content": "", "tool_calls": [call("propose_plan", mode="code-lite",
                                            services=["chat", "coder"],
                                            contexts={"chat": 16384},
                                            explanation="big does not fit; shorter chat")]},
        {"content": "Keep code, with chat at 16K context. big does not fit."},
    ]
    with serve(tmp_path, turns, api_key="k-plan") as fake:
        yield fake.wait_ready()


def test_plan_shows_a_checked_proposal_and_changes_nothing(
        rejected_then_accepted: FakeVLLM) -> None:
    fake = rejected_then_accepted
    result = gpumod(["plan", "add big to my code mode", "--base-url", fake.base_url + "/v1",
                     "--model", "Qwen/Qwen3-8B"], env={"GPUMOD_LLM_API_KEY": "k-plan"})
    assert result.returncode == 0, result.stderr
    assert "proposal rejected: REJECTED by the simulator: big" in result.stderr
    assert "> simulate_mode" in result.stderr
    assert "Proposal: mode code-lite (fits)" in result.stdout
    assert "services: chat, coder" in result.stdout
    assert '"chat": 16384' in result.stdout
    assert "16K ctx" in result.stdout   # the simulator's picture, with the proposed context
    assert "Keep code, with chat at 16K context" in result.stdout
    assert "Nothing was changed" in result.stdout
    assert "k-plan" not in result.stdout + result.stderr
    # nothing changed: no new mode, contexts as before
    store = open_store()
    assert [r["name"] for r in store.query("SELECT name FROM modes")] == ["code"]
    chat = store.query_one("SELECT args FROM services WHERE name = 'chat'")["args"]
    assert "32768" in chat


def test_plan_json_has_the_simulation_and_every_step(rejected_then_accepted: FakeVLLM) -> None:
    fake = rejected_then_accepted
    result = gpumod(["plan", "add big", "--json"],
                    env={"GPUMOD_LLM_BASE_URL": fake.base_url + "/v1",
                         "GPUMOD_LLM_API_KEY": "k-plan"})   # model discovered from /v1/models
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "Qwen/Qwen3-8B"
    assert data["fits"] is True
    assert data["rejected_proposals"] == 1
    assert data["proposal"]["mode"] == "code-lite"
    assert data["simulation"]["fits"] is True
    kinds = [(s["kind"], s["name"]) for s in data["steps"]]
    assert ("tool_result", "simulate_mode") in kinds
    assert ("tool_result", "model_info") in kinds
    assert ("rejected", "propose_plan") in kinds
    assert ("proposal", "propose_plan") in kinds
    info = next(s for s in data["steps"] if s["kind"] == "tool_result" and
                s["name"] == "model_info")
    assert json.loads(info["text"])["layers"] == 40   # the real planner answered the model
    assert data["endpoint"]["api_key_set"] is True and "k-plan" not in result.stdout


def test_plan_fails_when_every_proposal_is_rejected(tmp_path: Path, services: None) -> None:
    too_big = call("propose_plan", mode="all", services=["chat", "coder", "big"],
                   explanation="everything")
    turns = [{"content": "", "tool_calls": [too_big]}, {"content": "", "tool_calls": [too_big]},
             {"content": "", "tool_calls": [too_big]}, {"content": "It cannot fit."}]
    with serve(tmp_path, turns) as fake:
        fake.wait_ready()
        result = gpumod(["plan", "run everything", "--base-url", fake.base_url + "/v1",
                         "--apply", "--yes"])
    assert result.returncode == 8, result.stdout + result.stderr
    assert "DOES NOT FIT" in result.stdout
    assert "error: the proposal does not fit: big" in result.stderr
    assert "alternative:" in result.stdout
    store = open_store()
    assert [r["name"] for r in store.query("SELECT name FROM modes")] == ["code"]


def test_plan_rejects_a_proposal_naming_an_unknown_service(tmp_path: Path,
                                                           services: None) -> None:
    turns = [{"content": "", "tool_calls": [call("propose_plan", mode="x",
                                                 services=["chat", "ghost"],
                                                 explanation="?")]},
             {"content": "", "tool_calls": [call("propose_plan", mode="x", services=["chat"],
                                                 explanation="just chat")]},
             {"content": "Just chat."}]
    with serve(tmp_path, turns) as fake:
        fake.wait_ready()
        result = gpumod(["plan", "x", "--base-url", fake.base_url + "/v1", "--json"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rejected = next(s for s in data["steps"] if s["kind"] == "rejected")
    assert "unknown service 'ghost'" in rejected["text"]
    assert data["proposal"]["services"] == ["chat"] and data["fits"] is True


def test_plan_needs_a_model(services: None) -> None:
    env = {k: "" for k in ("GPUMOD_LLM_BASE_URL", "GPUMOD_LLM_MODEL", "GPUMOD_LLM_API_KEY")}
    result = gpumod(["plan", "anything"], env=env)
    assert result.returncode == 2
    assert "error: no model to plan with" in result.stderr
    assert "GPUMOD_LLM_BASE_URL" in result.stderr


def test_plan_bad_inputs(services: None) -> None:
    bad_url = gpumod(["plan", "x", "--base-url", "ftp://nope"])
    assert bad_url.returncode == 2 and "--base-url must be an http(s) URL" in bad_url.stderr
    both = gpumod(["plan", "x", "--llm", "chat", "--base-url", "http://127.0.0.1:9/v1"])
    assert both.returncode == 2 and "give one" in both.stderr
    yes_alone = gpumod(["plan", "x", "--yes", "--base-url", "http://127.0.0.1:9/v1"])
    assert yes_alone.returncode == 2 and "--yes only goes with --apply" in yes_alone.stderr
    empty = gpumod(["plan", "  ", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert empty.returncode == 2 and "the prompt is empty" in empty.stderr
    unknown = gpumod(["plan", "x", "--llm", "ghost"])
    assert unknown.returncode == 3 and "unknown service 'ghost'" in unknown.stderr


def test_plan_unreachable_endpoint_is_one_clear_error(services: None) -> None:
    from gpumod.testing.harness import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    result = gpumod(["plan", "x", "--base-url", url, "--model", "m"])
    assert result.returncode == 7
    assert f"error: cannot reach {url}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def startable(tmp_path: Path, fake_gpus: Path) -> Iterator[None]:
    """`chat` can really start: the `vllm` on PATH is the fake, the GPUs are fake ones."""
    from gpumod.ops import api as bridge
    from gpumod.testing.harness import free_port

    store = open_store()
    register_gpu(store)
    small = model_folder(tmp_path, "Qwen__Qwen3-8B.json")
    define_service(store, ServiceSpec("chat", "local", "vllm", str(small), free_port(),
                                      gpus=(0,), args=("--max-model-len", "8192",
                                                       "--gpu-memory-utilization", "0.3")))
    try:
        yield
    finally:
        try:
            bridge.service_stop("chat")
        except Exception:
            pass


def _propose_chat_only(tmp_path: Path, runs: int = 2) -> FakeVLLM:
    """The n-th request gets the n-th turn: one proposal and one summary per `gpumod plan`."""
    turns = [{"content": "", "tool_calls": [call("propose_plan", mode="chat-only",
                                                 services=["chat"],
                                                 explanation="just chat\nfor now")]},
             {"content": "Switch to chat-only."}] * runs
    return serve(tmp_path, turns)


def test_plan_apply_saves_the_mode_and_switches_after_confirmation(
        tmp_path: Path, startable: None) -> None:
    with _propose_chat_only(tmp_path) as fake:
        fake.wait_ready()
        declined = gpumod(["plan", "only chat", "--base-url", fake.base_url + "/v1",
                           "--apply"], stdin="n\n")
        assert declined.returncode == 130, declined.stderr
        assert "Apply: save mode 'chat-only' and switch to it?" in declined.stderr
        assert open_store().query("SELECT name FROM modes") == []

        applied = gpumod(["plan", "only chat", "--base-url", fake.base_url + "/v1",
                          "--apply"], stdin="y\n")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "applied: mode chat-only is active" in applied.stdout
    store = open_store()
    mode = store.query_one("SELECT * FROM modes WHERE name = 'chat-only'")
    assert mode["description"] == "just chat for now"
    assert store.query_one("SELECT current_mode FROM host_state WHERE host = 'local'")[
        "current_mode"] == "chat-only"
    from gpumod.ops import api as bridge

    assert [s["state"] for s in bridge.service_list()] == ["running"]


def test_mcp_plan_with_ai_returns_the_checked_proposal(rejected_then_accepted: FakeVLLM,
                                                       monkeypatch) -> None:
    import anyio
    from mcp import Client

    from gpumod.mcp.server import build_server

    monkeypatch.setenv("GPUMOD_LLM_BASE_URL", rejected_then_accepted.base_url + "/v1")
    monkeypatch.setenv("GPUMOD_LLM_API_KEY", "k-plan")
    monkeypatch.delenv("GPUMOD_LLM_MODEL", raising=False)

    async def main():
        async with Client(build_server()) as client:
            return await client.call_tool("plan_with_ai", {"prompt": "add big to code"})

    result = anyio.run(main)
    assert not result.is_error, result.content[0].text
    data = result.structured_content
    assert data["fits"] is True and data["rejected_proposals"] == 1
    assert data["proposal"]["services"] == ["chat", "coder"]
    assert "k-plan" not in result.content[0].text
    assert [r["name"] for r in open_store().query("SELECT name FROM modes")] == ["code"]
