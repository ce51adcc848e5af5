"""The agent loop against a scripted OpenAI-compatible stub (real `openai` SDK, real HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumod.agent.client import make_client
from gpumod.agent.events import Final, Notice, TextDelta, ThinkingDelta, ToolCall, ToolResult, Usage
from gpumod.agent.loop import Agent, needs_responses_api, system_prompt
from gpumod.agent.tools import Tools
from gpumod.errors import ConfigError, EngineError
from tests.support.real import free_port
from tests.support.stub_server import StubServer


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hello.txt").write_text("hi there\n")
    return root


def agent_for(stub: StubServer, ws: Path, *, key: str | None = None, tools: bool = True,
              max_turns: int = 10, model: str | None = None) -> Agent:
    return Agent(make_client(stub.base_url, key), model or stub.model, base_url=stub.base_url,
                 key_set=key is not None, tools=Tools(ws) if tools else None,
                 max_turns=max_turns)


def test_tool_call_result_fed_back_then_final_answer(ws: Path) -> None:
    args = json.dumps({"path": str(ws)})
    script = [
        {"reasoning": "I should list the folder.",
         "tool_calls": [{"name": "ls", "arguments": args}]},
        {"reasoning": "It has hello.txt.", "content": "The folder holds hello.txt."},
    ]
    with StubServer(script) as stub:
        events = list(agent_for(stub, ws).run("What is in the folder?"))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    assert thinking == "I should list the folder.It has hello.txt."
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("ls", {"path": str(ws)})]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results[0].text == "hello.txt" and not results[0].is_error
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == \
        "The folder holds hello.txt."
    final = next(e for e in events if isinstance(e, Final))
    assert (final.reason, final.turns, final.text) == ("answer", 2, "The folder holds hello.txt.")
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 10, 30)
    # What went back to the model: the assistant's call, then the tool result with its id.
    second = stub.requests[1]["messages"]
    assert second[-2]["role"] == "assistant"
    assert second[-2]["tool_calls"][0]["function"] == {"name": "ls", "arguments": args}
    assert second[-1] == {"role": "tool", "tool_call_id": "chatcmpl-tool-0",
                          "content": "hello.txt"}
    assert {t["function"]["name"] for t in stub.requests[0]["tools"]} == \
        {"ls", "read", "glob", "rg"}
    assert stub.requests[0]["stream"] is True


def test_reasoning_field_named_reasoning_is_shown_too(ws: Path) -> None:
    with StubServer([{"reasoning": "hmm", "content": "4"}], reasoning_field="reasoning") as stub:
        events = list(agent_for(stub, ws).run("2+2?"))
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "hmm"


def test_system_prompt_names_the_working_directory_and_tools(ws: Path) -> None:
    with StubServer([{"content": "ok"}]) as stub:
        list(agent_for(stub, ws).run("hi"))
    system = stub.requests[0]["messages"][0]
    assert system["role"] == "system"
    assert f"working directory is {ws.resolve()}" in system["content"]
    assert "rg(args)" in system["content"] and "absolute paths" in system["content"]
    assert "rg(args)" not in system_prompt(ws, tools=False)


def test_stops_at_max_turns_and_says_so(ws: Path) -> None:
    call = {"name": "ls", "arguments": json.dumps({"path": str(ws)})}
    with StubServer([{"tool_calls": [call]}] * 5) as stub:
        events = list(agent_for(stub, ws, max_turns=2).run("loop forever"))
    final = next(e for e in events if isinstance(e, Final))
    assert (final.reason, final.turns) == ("max_turns", 2)
    assert len(stub.requests) == 2


def test_bad_arguments_and_unknown_tools_go_back_to_the_model_as_errors(ws: Path) -> None:
    script = [
        {"tool_calls": [{"name": "read", "arguments": '{"file_path": '},
                        {"name": "bash", "arguments": '{"cmd": "ls"}'}]},
        {"content": "Sorry."},
    ]
    with StubServer(script) as stub:
        events = list(agent_for(stub, ws).run("go"))
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [r.is_error for r in results] == [True, True]
    assert "not valid JSON" in results[0].text
    assert "unknown tool 'bash'" in results[1].text
    sent = stub.requests[1]["messages"]
    tool_messages = [m for m in sent if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["chatcmpl-tool-0", "chatcmpl-tool-1"]
    assert "not valid JSON" in tool_messages[0]["content"]
    # the broken arguments are replaced by {} in history so chat templates do not choke
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["function"]["arguments"] == "{}"
    assert next(e for e in events if isinstance(e, Final)).reason == "answer"


def test_tool_call_without_id_gets_one(ws: Path) -> None:
    script = [{"tool_calls": [{"name": "ls", "arguments": json.dumps({"path": str(ws)}),
                               "no_id": True}]},
              {"content": "done"}]
    with StubServer(script) as stub:
        list(agent_for(stub, ws).run("go"))
    sent = stub.requests[1]["messages"]
    call_id = sent[-2]["tool_calls"][0]["id"]
    assert call_id and sent[-1]["tool_call_id"] == call_id


def test_tool_result_event_is_truncated_but_the_model_gets_all(ws: Path) -> None:
    (ws / "big.txt").write_text("line of text\n" * 2000)
    script = [{"tool_calls": [{"name": "read",
                               "arguments": json.dumps({"file_path": str(ws / "big.txt")})}]},
              {"content": "big"}]
    with StubServer(script) as stub:
        events = list(agent_for(stub, ws).run("read it"))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.truncated and len(result.text) == 800
    assert result.length > 20_000
    assert len(stub.requests[1]["messages"][-1]["content"]) == result.length


def test_endpoint_without_tool_parser_continues_without_tools(ws: Path) -> None:
    with StubServer([{"content": "4"}], reject_tools=True) as stub:
        agent = agent_for(stub, ws)
        events = list(agent.run("2+2?"))
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1
    assert "tools are not enabled" in notices[0].text
    assert "--enable-auto-tool-choice" in notices[0].text
    assert "\n" not in notices[0].text
    assert "tools" in stub.requests[0] and "tools" not in stub.requests[1]
    assert "rg(args)" not in stub.requests[1]["messages"][0]["content"]
    assert next(e for e in events if isinstance(e, Final)).text == "4"
    assert not agent.tools_enabled


def test_no_tools_sends_no_tools(ws: Path) -> None:
    with StubServer([{"content": "4"}]) as stub:
        list(agent_for(stub, ws, tools=False).run("2+2?"))
    assert "tools" not in stub.requests[0]


def test_history_is_kept_between_runs(ws: Path) -> None:
    with StubServer([{"content": "Hello Ada."}, {"content": "Ada."}]) as stub:
        agent = agent_for(stub, ws)
        list(agent.run("I am Ada."))
        list(agent.run("Who am I?"))
    roles = [(m["role"], m["content"]) for m in stub.requests[1]["messages"][1:]]
    assert roles == [("user", "I am Ada."), ("assistant", "Hello Ada."), ("user", "Who am I?")]


def test_snapshot_restore_forgets_an_interrupted_exchange(ws: Path) -> None:
    with StubServer([{"content": "a"}]) as stub:
        agent = agent_for(stub, ws)
        mark = agent.snapshot()
        stream = agent.run("first")
        next(stream)  # the turn has started; then the user presses Ctrl+C
        agent.restore(mark)
    assert [m["role"] for m in agent.messages] == ["system"]


# -- Responses API ------------------------------------------------------------


def test_gpt_oss_models_use_the_responses_api(ws: Path) -> None:
    assert needs_responses_api("openai/gpt-oss-20b") and needs_responses_api("GPT-OSS-120B")
    assert not needs_responses_api("Qwen/Qwen3-Coder-30B-A3B-Instruct")
    args = json.dumps({"file_path": str(ws / "hello.txt")})
    script = [{"reasoning": "Read it.", "tool_calls": [{"name": "read", "arguments": args}]},
              {"content": "It says hi there."}]
    with StubServer(script, model="openai/gpt-oss-20b") as stub:
        agent = agent_for(stub, ws)
        assert agent.api == "responses"
        events = list(agent.run("What does hello.txt say?"))
    assert stub.paths == ["/v1/responses", "/v1/responses"]
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Read it."
    result = next(e for e in events if isinstance(e, ToolResult))
    assert "hi there" in result.text
    final = next(e for e in events if isinstance(e, Final))
    assert (final.reason, final.text) == ("answer", "It says hi there.")
    second = stub.requests[1]
    assert "working directory" in second["instructions"]
    kinds = [item.get("type", item.get("role")) for item in second["input"]]
    assert kinds == ["user", "function_call", "function_call_output"]
    assert second["input"][2]["call_id"] == "call_r0"
    assert "hi there" in second["input"][2]["output"]
    assert {t["name"] for t in stub.requests[0]["tools"]} == {"ls", "read", "glob", "rg"}
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.prompt_tokens == 40


# -- failures -----------------------------------------------------------------


def test_missing_key_is_a_config_error_naming_pi_api_key(ws: Path) -> None:
    with StubServer([{"content": "x"}], api_key="s3cret") as stub, \
            pytest.raises(ConfigError) as caught:
        list(agent_for(stub, ws, key=None).run("hi"))
    assert "PI_API_KEY is not set" in caught.value.message


def test_wrong_key_is_a_config_error_without_the_key(ws: Path) -> None:
    with StubServer([{"content": "x"}], api_key="s3cret") as stub:
        with pytest.raises(ConfigError) as caught:
            list(agent_for(stub, ws, key="wrong-key-123").run("hi"))
        events = list(agent_for(stub, ws, key="s3cret").run("hi"))
    assert "refused the key" in caught.value.message
    assert "wrong-key-123" not in caught.value.message + (caught.value.hint or "")
    assert next(e for e in events if isinstance(e, Final)).text == "x"


def test_endpoint_down_is_an_engine_error(ws: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = Agent(make_client(url, None), "m", base_url=url, key_set=False, tools=Tools(ws))
    with pytest.raises(EngineError) as caught:
        list(agent.run("hi"))
    assert caught.value.message.startswith(f"cannot reach {url}")
    assert "\n" not in caught.value.message


def test_unknown_model_404_is_an_engine_error(ws: Path) -> None:
    with StubServer([]) as stub:
        agent = Agent(make_client(stub.base_url.removesuffix("/v1") + "/nope", None), "m",
                      base_url="u", key_set=False, tools=None)
        with pytest.raises(EngineError) as caught:
            list(agent.run("hi"))
    assert "404" in caught.value.message


def test_max_turns_must_be_positive(ws: Path) -> None:
    with pytest.raises(ConfigError):
        Agent(make_client("http://127.0.0.1:1/v1", None), "m", base_url="u", key_set=False,
              tools=None, max_turns=0)
