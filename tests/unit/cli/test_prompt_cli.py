"""`pi prompt` as a user runs it: output, --json, -i, named deployments, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumod.errors import ConfigError, NotFoundError
from gpumod.ops.endpoints import endpoint_for
from gpumod.ops.services import get_service
from gpumod.spec import ServiceSpec
from gpumod.store import services as services_table
from gpumod.store.db import open_store
from tests.support.cli import run_cli
from tests.support.stub_server import StubServer


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hello.txt").write_text("hi there\n")
    monkeypatch.chdir(root)
    return root


def add_service(name: str, host: str, port: int, model: str = "Qwen/Qwen3-0.6B",
                args: tuple[str, ...] = ()) -> ServiceSpec:
    spec = ServiceSpec(name=name, host=host, engine="vllm", model=model, port=port, args=args)
    services_table.insert(open_store(), spec)
    return spec


def add_pod(name: str, address: str | None, port_map: dict[str, str] | None = None) -> None:
    store = open_store()
    with store.transaction() as db:
        db.execute("INSERT INTO hosts (name, kind, ssh_command, address, port_map) "
                   "VALUES (?, 'ssh', ?, ?, ?)",
                   (name, "ssh -p 2222 root@10.0.0.9", address, json.dumps(port_map or {})))


# -- human output --------------------------------------------------------------


def test_streams_labelled_thinking_tool_calls_results_and_answer(ws) -> None:
    script = [{"reasoning": "Let me look.",
               "tool_calls": [{"name": "ls", "arguments": json.dumps({"path": str(ws)})}]},
              {"content": "There is hello.txt."}]
    with StubServer(script) as stub:
        code, out, err = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                                 "what is here?")
    assert code == 0, err
    lines = out.splitlines()
    assert "[thinking]" in lines
    assert "Let me look." in out
    assert f'tool call ls {{"path": "{ws}"}}' in out
    assert any(line.startswith("tool result ls (9 chars)") for line in lines)
    assert "hello.txt" in lines
    assert "There is hello.txt." in lines
    assert "done: final answer after 2 turns" in out
    assert "20 prompt + 10 completion tokens" in out


def test_model_text_is_never_rendered_as_markup(ws) -> None:
    evil = "[bold red]boom[/bold red] [link=http://x]y[/link]"
    with StubServer([{"reasoning": evil, "content": evil}]) as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                               "hi")
    assert code == 0
    assert out.count(evil) == 2


def test_max_turns_reached_is_said(ws) -> None:
    call = {"name": "ls", "arguments": json.dumps({"path": str(ws)})}
    with StubServer([{"tool_calls": [call]}] * 3) as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                               "--max-turns", "1", "loop")
    assert code == 0
    assert "stopped: reached --max-turns 1 without a final answer" in out
    assert len(stub.requests) == 1


def test_tools_refused_is_one_line_and_the_answer_follows(ws) -> None:
    with StubServer([{"content": "4"}], reject_tools=True) as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                               "2+2?")
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "continuing without tools" in notes[0]
    assert "4" in out.splitlines()


def test_model_discovered_when_only_base_url_given(ws) -> None:
    with StubServer([{"content": "ok"}], model="served/model-x") as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "hi")
    assert code == 0
    assert stub.requests[0]["model"] == "served/model-x"
    assert "model served/model-x at" in out


# -- --json ------------------------------------------------------------------


def test_json_prints_one_event_per_line(ws) -> None:
    script = [{"reasoning": "r", "tool_calls": [
                  {"name": "read", "arguments": json.dumps({"file_path": str(ws / "hello.txt")})}]},
              {"content": "It says hi."}]
    with StubServer(script) as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                               "--json", "read hello.txt")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-2:] == ["final", "usage"]
    assert {"thinking", "tool_call", "tool_result", "text", "turn"} <= set(types)
    result = next(e for e in events if e["type"] == "tool_result")
    assert "hi there" in result["text"] and result["is_error"] is False
    assert result["length"] == result["full_length"] == len(result["text"])
    assert events[-2]["reason"] == "answer" and events[-2]["text"] == "It says hi."
    assert events[-1]["total_tokens"] == 30 and events[-1]["elapsed_s"] >= 0
    assert events[0]["workspace"] == str(ws.resolve())


# -- -i ----------------------------------------------------------------------


def test_interactive_keeps_history_until_end_of_input(ws) -> None:
    script = [{"content": "one"}, {"content": "two"}, {"content": "three"}]
    with StubServer(script) as stub:
        code, out, _ = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                               "-i", "first", input="second question\n\nthird\n")
    assert code == 0
    assert len(stub.requests) == 3
    contents = [m["content"] for m in stub.requests[2]["messages"][1:]]
    assert contents == ["first", "one", "second question", "two", "third"]
    assert out.count("done: final answer") == 3


# -- named deployments ---------------------------------------------------------


def test_named_local_deployment_uses_loopback_and_served_name(ws) -> None:
    with StubServer([{"content": "hello"}], api_key="k1") as stub:
        port = int(stub.base_url.split(":")[2].split("/")[0])
        add_service("qwen", "local", port, args=("--served-model-name", "qwen-small"))
        import os

        os.environ["PI_API_KEY"] = "k1"  # reset by the autouse fixture for the next test
        try:
            code, out, err = run_cli("prompt", "qwen", "hi")
        finally:
            del os.environ["PI_API_KEY"]
    assert code == 0, err
    assert stub.requests[0]["model"] == "qwen-small"
    assert f"at http://127.0.0.1:{port}/v1" in out
    assert "k1" not in out + err


def test_endpoint_for_pods_uses_port_map_then_address() -> None:
    store = open_store()
    add_pod("dc1", "203.0.113.5", {"8001": "proxy.example.net:40123"})
    add_pod("dc2", None)
    add_pod("dc3", "2001:db8::1")
    a = add_service("a", "dc1", 8001)
    b = add_service("b", "dc1", 8002, model="Qwen/Qwen3-8B")
    c = add_service("c", "dc2", 8000)
    d = add_service("d", "dc3", 8000)
    assert endpoint_for(store, a) == ("http://proxy.example.net:40123/v1", "Qwen/Qwen3-0.6B")
    assert endpoint_for(store, b) == ("http://203.0.113.5:8002/v1", "Qwen/Qwen3-8B")
    assert endpoint_for(store, c) == ("http://10.0.0.9:8000/v1", "Qwen/Qwen3-0.6B")
    assert endpoint_for(store, d)[0] == "http://[2001:db8::1]:8000/v1"
    assert get_service(store, "a") == a


def test_bad_port_map_entry_is_a_config_error() -> None:
    add_pod("dc1", "203.0.113.5", {"8001": "no-port-here"})
    spec = add_service("a", "dc1", 8001)
    with pytest.raises(ConfigError):
        endpoint_for(open_store(), spec)


def test_unknown_deployment_exits_not_found(ws) -> None:
    add_service("qwen", "local", 18123)
    code, _, err = run_cli("prompt", "nope", "hi")
    assert code == NotFoundError.exit_code
    assert "error: unknown service 'nope'" in err and "qwen" in err


def test_pod_that_does_not_hold_the_deployment_is_refused(ws) -> None:
    add_pod("dc1", "203.0.113.5")
    add_service("qwen", "local", 18123)
    code, _, err = run_cli("prompt", "qwen", "--pod", "dc1", "hi")
    assert code == NotFoundError.exit_code
    assert "is on pod 'local', not 'dc1'" in err
    code, _, err = run_cli("prompt", "qwen", "--pod", "nowhere", "hi")
    assert code == NotFoundError.exit_code and "unknown pod" in err


# -- failures at the boundary ------------------------------------------------------


def test_endpoint_down_is_one_line_and_exit_7(ws) -> None:
    from tests.support.real import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run_cli("prompt", "--base-url", url, "--model", "m", "hi")
    assert code == 7
    assert err.splitlines()[0].startswith(f"error: cannot reach {url}")
    assert "Traceback" not in err


def test_key_needed_but_unset_and_wrong_key(ws, monkeypatch) -> None:
    with StubServer([{"content": "x"}], api_key="s3cret") as stub:
        code, _, err = run_cli("prompt", "--base-url", stub.base_url, "--model", "m", "hi")
        assert code == 2 and "PI_API_KEY is not set" in err
        monkeypatch.setenv("PI_API_KEY", "not-the-key")
        code, out, err = run_cli("prompt", "--base-url", stub.base_url, "--model", "m",
                                 "hi")
    assert code == 2 and "refused the key in PI_API_KEY" in err
    assert "not-the-key" not in out + err


@pytest.mark.parametrize("argv, text", [
    (["prompt"], "missing arguments"),
    (["prompt", "qwen"], "missing arguments"),
    (["prompt", "qwen", "hi", "extra"], "too many arguments"),
    (["prompt", "qwen", "  "], "the message is empty"),
    (["prompt", "bad name!", "hi"], "invalid deployment name"),
    (["prompt", "--base-url", "ftp://x", "hi"], "must be an http(s) URL"),
    (["prompt", "--base-url", "http://127.0.0.1:1/v1", "--pod", "dc1", "hi"], "--pod"),
])
def test_bad_input_is_a_usage_error(ws, argv, text) -> None:
    code, _, err = run_cli(*argv)
    assert code == 2
    assert text in err


def test_max_turns_zero_is_rejected(ws) -> None:
    code, _, err = run_cli("prompt", "--base-url", "http://127.0.0.1:1/v1", "--max-turns",
                           "0", "hi")
    assert code == 2 and "max-turns" in err
