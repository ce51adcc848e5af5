"""The MCP server through the SDK's own client, in process (memory streams and direct)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from gpumod.mcp.server import TOOL_NAMES, build_server
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from tests.support.mcp import structured
from tests.support.models import model_folder
from tests.support.store import define_mode, define_service, register_gpu

MUTATING = {"service_start", "service_stop", "service_sleep", "service_wake", "mode_switch"}


def with_client(action, mode: str = "legacy") -> Any:
    """Run `action(client)` against a fresh server; `legacy` = JSON-RPC over memory streams."""
    async def main() -> Any:
        async with Client(build_server(), mode=mode) as client:
            return await action(client)
    return anyio.run(main)


def call(name: str, arguments: dict[str, Any] | None = None, mode: str = "legacy"):
    return with_client(lambda c: c.call_tool(name, arguments or {}), mode)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_lists_every_tool_with_schemas_and_annotations(mode: str) -> None:
    tools = with_client(lambda c: c.list_tools(), mode).tools
    by_name = {t.name: t for t in tools}
    assert set(by_name) == set(TOOL_NAMES)
    for name, tool in by_name.items():
        assert tool.description, name
        assert tool.input_schema["type"] == "object"
        if name in MUTATING:
            assert tool.annotations.read_only_hint is False, name
            assert tool.annotations.destructive_hint is not None, name
        else:
            assert tool.annotations.read_only_hint is True, name
    assert by_name["service_stop"].annotations.destructive_hint is True
    assert by_name["mode_switch"].annotations.destructive_hint is True
    assert by_name["service_start"].annotations.destructive_hint is False
    assert by_name["service_start"].input_schema["required"] == ["name"]
    sim = by_name["simulate_mode"].input_schema["properties"]
    assert sim["add"]["type"] == "array"
    assert by_name["model_estimate"].input_schema["properties"]["engine"]["enum"] == \
        ["vllm", "llamacpp"]


def test_gpu_status_reads_the_fake_gpu(fake_gpus: Path) -> None:
    result = call("gpu_status")
    assert not result.is_error, result.content
    data = structured(result)
    assert data["host"] == "local"
    assert len(data["gpus"]) == 1
    assert "H100" in data["gpus"][0]["name"]
    assert data["gpus"][0]["memory_total_mib"] > 80_000


def test_unknown_pod_is_a_tool_error_with_the_hint() -> None:
    result = call("gpu_status", {"pod": "nosuchpod"})
    assert result.is_error
    text = result.content[0].text
    assert "unknown pod 'nosuchpod'" in text
    assert "hint:" in text


def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving() -> None:
    async def action(client):
        wrong_type = await client.call_tool("model_estimate", {"model": 3})
        missing = await client.call_tool("service_start", {})
        bad_enum = await client.call_tool("model_estimate", {"model": "a/b", "engine": "tgi"})
        too_long = await client.call_tool("service_stop", {"name": "x" * 65})
        unknown_tool = await client.call_tool("rm_rf", {})
        still_ok = await client.list_tools()
        return wrong_type, missing, bad_enum, too_long, unknown_tool, still_ok

    wrong_type, missing, bad_enum, too_long, unknown_tool, still_ok = with_client(action)
    for result in (wrong_type, missing, bad_enum, too_long, unknown_tool):
        assert result.is_error
    assert "model" in wrong_type.content[0].text
    assert "name" in missing.content[0].text
    assert "engine" in bad_enum.content[0].text
    assert "rm_rf" in unknown_tool.content[0].text
    assert len(still_ok.tools) == len(TOOL_NAMES)


def test_model_info_reads_a_model_folder(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    data = structured(call("model_info", {"model": str(folder)}))
    assert data["layers"] == 36
    assert data["params"] > 8_000_000_000


def test_model_info_missing_path_is_a_tool_error(tmp_path: Path) -> None:
    result = call("model_info", {"model": str(tmp_path / "nothing-here")})
    assert result.is_error
    assert "no such file or folder" in result.content[0].text


def _two_services(tmp_path: Path) -> None:
    store = open_store()
    register_gpu(store)
    small = model_folder(tmp_path, "Qwen__Qwen3-8B.json")
    large = model_folder(tmp_path, "Qwen__Qwen3-14B.json")
    define_service(store, ServiceSpec("chat", "local", "vllm", str(small), 8001, args=(
        "--max-model-len", "32768", "--gpu-memory-utilization", "0.45")))
    define_service(store, ServiceSpec("coder", "local", "vllm", str(large), 8002, args=(
        "--max-model-len", "32768", "--gpu-memory-utilization", "0.45")))
    define_service(store, ServiceSpec("big", "local", "vllm", str(large), 8003, args=(
        "--max-model-len", "40960", "--gpu-memory-utilization", "0.9")))
    define_mode(store, "code", ["chat", "coder"])


def test_simulate_mode_fits_and_does_not_fit(tmp_path: Path) -> None:
    _two_services(tmp_path)
    fits = structured(call("simulate_mode", {"mode": "code"}))
    assert fits["fits"] is True
    assert fits["services"] == ["chat", "coder"]
    assert "chat" in fits["picture"] and "coder" in fits["picture"]

    over = structured(call("simulate_mode", {"mode": "code", "add": ["big"]}))
    assert over["fits"] is False
    assert "big" in over["reason"]
    assert over["gpus"][0]["over_by_mib"] > 0
    assert over["alternatives"], "a failed fit proposes alternatives"


def test_simulate_mode_errors(tmp_path: Path) -> None:
    _two_services(tmp_path)
    unknown = call("simulate_mode", {"mode": "nope"})
    assert unknown.is_error and "unknown mode 'nope'" in unknown.content[0].text
    nothing = call("simulate_mode", {})
    assert nothing.is_error and "nothing to simulate" in nothing.content[0].text
    bad_ctx = call("simulate_mode", {"mode": "code", "contexts": {"chat": "lots"}})
    assert bad_ctx.is_error and "contexts" in bad_ctx.content[0].text


def test_tool_errors_carry_their_kind_and_exit_code(tmp_path: Path, monkeypatch) -> None:
    """A client branches on the error's kind (the error class's code) and exit code, not
    on the wording of the message: through the SDK's own client session."""
    _two_services(tmp_path)
    define_mode(open_store(), "huge", ["chat", "coder", "big"])
    monkeypatch.delenv("GPUMOD_LLM_BASE_URL", raising=False)

    async def action(client):
        return {
            "not_found": await client.call_tool("gpu_status", {"pod": "nosuchpod"}),
            "usage": await client.call_tool("simulate_mode", {}),
            "capacity": await client.call_tool("mode_switch", {"mode": "huge"}),
            "config": await client.call_tool("plan_with_ai", {"prompt": "add a reranker"}),
        }

    results = with_client(action)
    exit_codes = {"not_found": 3, "usage": 2, "capacity": 8, "config": 2}
    for kind, result in results.items():
        assert result.is_error, (kind, result.content)
        data = result.structured_content
        assert data is not None, kind
        assert data["kind"] == kind and data["exit_code"] == exit_codes[kind], data
        assert data["error"] and data["error"] in result.content[0].text
    assert results["not_found"].structured_content["hint"].startswith("known: local")
    assert "does not fit" in results["capacity"].structured_content["error"]
    # the refused switch changed nothing: no mode became current
    assert structured(call("mode_status"))["current_mode"] is None


def test_plan_with_ai_without_an_endpoint_says_what_to_set(monkeypatch) -> None:
    for var in ("GPUMOD_LLM_BASE_URL", "GPUMOD_LLM_MODEL", "GPUMOD_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    result = call("plan_with_ai", {"prompt": "add a reranker"})
    assert result.is_error
    assert "GPUMOD_LLM_BASE_URL" in result.content[0].text


def test_results_are_json_text_too(fake_gpus: Path) -> None:
    """Clients that ignore structured content still get the JSON as text."""
    result = call("gpu_status")
    assert json.loads(result.content[0].text)["host"] == "local"


def test_gateway_status_without_a_gateway() -> None:
    result = call("gateway_status")
    assert not result.is_error
    data = structured(result)
    assert data["host"] == "local" and data["state"] == "not started"
    assert data["models"] == []
