"""The MCP server through the SDK's own client: over stdio and HTTP (the real `gpumod mcp`
process) and in process, with mutating tools driving a real fake-vLLM process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from gpumod.mcp.server import TOOL_NAMES, build_server
from gpumod.spec import ServiceSpec
from gpumod.store.db import open_store
from gpumod.testing.harness import free_port, port_open
from tests.support.mcp import structured
from tests.support.procs import stop_process
from tests.support.services import chat_service
from tests.support.store import define_mode, define_service, register_gpu


@pytest.fixture
def chat(fake_gpus: Path) -> Iterator[str]:
    with chat_service(free_port()) as name:
        define_mode(open_store(), "code", [name])
        yield name


def stdio_params() -> StdioServerParameters:
    # The SDK passes only a safe subset of the environment; hand over what gpumod needs.
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "gpumod.cli.main", "mcp"], env=dict(os.environ))


def run(server: Any, action) -> Any:
    async def main() -> Any:
        async with Client(server) as client:
            return await action(client)
    return anyio.run(main)


def test_stdio_lists_tools_and_calls_a_read_only_tool(fake_gpus: Path) -> None:
    async def action(client):
        tools = await client.list_tools()
        status = await client.call_tool("gpu_status", {})
        bad = await client.call_tool("service_status", {"name": ""})
        unknown = await client.call_tool("service_status", {"name": "ghost"})
        again = await client.call_tool("gpu_status", {"pod": "local"})
        return tools, status, bad, unknown, again

    tools, status, bad, unknown, again = run(stdio_params(), action)
    assert {t.name for t in tools.tools} == set(TOOL_NAMES)
    assert not status.is_error
    assert structured(status)["gpus"][0]["memory_total_mib"] == 81559
    assert bad.is_error and "name" in bad.content[0].text
    assert unknown.is_error and "unknown service 'ghost'" in unknown.content[0].text
    assert not again.is_error       # the server survived the errors


def test_stdio_mutating_tools_drive_a_real_service(chat: str) -> None:
    async def action(client):
        started = await client.call_tool("service_start", {"name": chat})
        listed = await client.call_tool("service_list", {})
        gpus = await client.call_tool("gpu_status", {})
        slept = await client.call_tool("service_sleep", {"name": chat})
        asleep = await client.call_tool("service_list", {"pod": "local"})
        woken = await client.call_tool("service_wake", {"name": chat})
        stopped = await client.call_tool("service_stop", {"name": chat})
        after = await client.call_tool("service_list", {})
        return started, listed, gpus, slept, asleep, woken, stopped, after

    started, listed, gpus, slept, asleep, woken, stopped, after = run(stdio_params(), action)
    for result in (started, listed, gpus, slept, asleep, woken, stopped, after):
        assert not result.is_error, result.content[0].text
    assert structured(started)["started"] == ["chat"]
    [row] = structured(listed)["services"]
    assert (row["name"], row["state"]) == ("chat", "running")
    assert structured(gpus)["processes"][0]["service"] == "chat"
    assert structured(gpus)["processes"][0]["used_mib"] > 20_000
    sleep = structured(slept)
    assert sleep["result"] == "asleep l1" and sleep["memory_after_mib"] < 1024
    assert structured(asleep)["services"][0]["state"] == "sleeping"
    assert structured(woken)["result"] == "awake"
    assert structured(stopped)["stopped"] == ["chat"]
    assert structured(after)["services"][0]["state"] == "stopped"


def test_in_process_mode_switch_verify_and_status(chat: str) -> None:
    async def action(client):
        before = await client.call_tool("mode_verify", {"mode": "code"})
        switched = await client.call_tool("mode_switch", {"mode": "code"})
        status = await client.call_tool("mode_status", {})
        verified = await client.call_tool("mode_verify", {"mode": "code"})
        modes = await client.call_tool("mode_list", {})
        missing = await client.call_tool("mode_switch", {"mode": "nope"})
        return before, switched, status, verified, modes, missing

    before, switched, status, verified, modes, missing = run(build_server(), action)
    b = structured(before)
    assert b["healthy"] is False and b["problems"][0].startswith("chat: process stopped")
    assert not switched.is_error, switched.content[0].text
    assert structured(switched)["ok"] is True
    assert structured(status)["current_mode"] == "code"
    v = structured(verified)
    assert v["healthy"] is True and v["problems"] == [] and v["current"] is True
    assert structured(modes)["modes"] == [
        {"name": "code", "host": "local", "description": "", "services": ["chat"],
         "sleep_on_idle": [], "current": True}]
    assert missing.is_error and "unknown mode 'nope'" in missing.content[0].text


def test_start_failure_is_a_tool_error_with_the_engines_reason(fake_gpus: Path,
                                                                monkeypatch) -> None:
    store = open_store()
    register_gpu(store)
    define_service(store, ServiceSpec("broken", "local", "vllm", "Qwen/Qwen3-8B", free_port(),
                                      gpus=(0,), env={"FAKE_VLLM_FAIL": "CUDA out of memory"}))

    result = run(build_server(), lambda c: c.call_tool("service_start", {"name": "broken"}))
    assert result.is_error
    text = result.content[0].text
    assert "broken did not start" in text and "CUDA out of memory" in text


MCP_KEY = 'mcp-"key"-0123456789'


def start_http(tmp_path: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    log = open(tmp_path / "mcp-http.log", "wb")  # noqa: SIM115 - closed by the process end
    proc = subprocess.Popen([sys.executable, "-m", "gpumod.cli.main", "mcp", "--transport",
                             "http", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.monotonic() + 20
    while not port_open(port):
        assert proc.poll() is None, (tmp_path / "mcp-http.log").read_text()
        assert time.monotonic() < deadline, "the HTTP server did not open its port"
        time.sleep(0.1)
    return proc


def keyed_client(url: str, key: str):
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return streamable_http_client(url, http_client=http)


def test_http_transport_binds_loopback_and_needs_the_bearer_key(fake_gpus: Path,
                                                                 tmp_path: Path) -> None:
    import httpx

    port = free_port()
    env = {**os.environ, "GPUMOD_MCP_KEY": MCP_KEY}
    proc = start_http(tmp_path, port, env)
    try:
        listening = Path("/proc/net/tcp").read_text()
        assert f"0100007F:{port:04X}" in listening       # 127.0.0.1, not 0.0.0.0
        url = f"http://127.0.0.1:{port}/mcp"
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "0"}}}
        headers = {"Accept": "application/json, text/event-stream"}
        for auth in (None, "Bearer wrong", f"Basic {MCP_KEY}", f"Bearer {MCP_KEY}x"):
            extra = {"Authorization": auth} if auth else {}
            refused = httpx.post(url, json=init, headers={**headers, **extra})
            assert refused.status_code == 401, auth
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url, headers=headers).status_code == 401

        async def action(client):
            return await client.list_tools(), await client.call_tool("gpu_status", {})

        tools, status = run(keyed_client(url, MCP_KEY), action)
        assert len(tools.tools) == len(TOOL_NAMES)
        assert structured(status)["host"] == "local"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert MCP_KEY not in cmdline                       # the key never in argv
    finally:
        stop_process(proc)


def test_http_transport_refuses_to_start_without_a_key(fake_gpus: Path,
                                                       tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUMOD_MCP_KEY", "PI_API_KEY")}
    done = subprocess.run([sys.executable, "-m", "gpumod.cli.main", "mcp", "--transport",
                           "http", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: `gpumod mcp --transport http` needs a key")
    assert "hint: export GPUMOD_MCP_KEY=" in done.stderr
    # PI_API_KEY serves as the key when GPUMOD_MCP_KEY is not set
    port = free_port()
    proc = start_http(tmp_path, port, {**env, "PI_API_KEY": "sk-pi-key-0123456789"})
    try:
        async def action(client):
            return await client.list_tools()

        url = f"http://127.0.0.1:{port}/mcp"
        assert len(run(keyed_client(url, "sk-pi-key-0123456789"), action).tools) == \
            len(TOOL_NAMES)
    finally:
        stop_process(proc)


def test_mcp_cli_bad_options() -> None:
    from tests.support.cli import run_cli

    result = run_cli("mcp", "--port", "9000")
    assert result.code == 2 and "--port only goes with --transport http" in result.stderr
    result = run_cli("mcp", "--transport", "carrier-pigeon")
    assert result.code == 2
