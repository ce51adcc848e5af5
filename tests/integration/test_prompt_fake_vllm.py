"""`pi prompt` end to end: the real CLI process against the fake vLLM.

The fake vLLM runs as its own process with vLLM's flags; a JSON script makes it
stream reasoning, tool calls and answers. Nothing here is mocked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumod.testing.fake_nvidia_smi import write_state
from gpumod.testing.harness import FakeVLLM, free_port

PARSERS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
           "--reasoning-parser", "qwen3"]


def pi(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpumod.cli.main", "prompt", *args],
                          cwd=cwd, env=full, input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "file.txt").write_text("The secret word is pelican.\n")
    return root


@pytest.fixture
def vllm(tmp_path: Path, ws: Path) -> Iterator:
    """Start a fake vLLM with a script: vllm(script, args=..., model=...) -> FakeVLLM."""
    started: list[FakeVLLM] = []
    gpus = write_state(tmp_path / "gpus.json", ["h100"])  # a vLLM needs a (fake) GPU

    def start(script: list[dict], *, args: list[str] = PARSERS, model: str = "Qwen/Qwen3-8B",
              key: str = "test-key") -> FakeVLLM:
        path = tmp_path / f"script{len(started)}.json"
        path.write_text(json.dumps(script))
        engine = FakeVLLM(model, [*args, "--api-key", key], log_path=tmp_path / "vllm.log",
                          env={"FAKE_VLLM_SCRIPT": str(path)}, gpu_state=gpus)
        started.append(engine)
        return engine.wait_ready()

    yield start
    for engine in started:
        engine.stop()


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_tool_call_result_and_final_answer_streamed(vllm, ws: Path) -> None:
    target = ws / "docs" / "file.txt"
    engine = vllm([
        {"reasoning": "I need to read the file.",
         "tool_calls": [{"name": "read", "arguments": json.dumps({"file_path": str(target)})}]},
        {"reasoning": "The file names a bird.", "content": "The secret word is pelican."},
    ])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B", "--json",
               "Read docs/file.txt and tell me the secret word"],
              cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    events = events_of(proc.stdout)
    thinking = "".join(e["text"] for e in events if e["type"] == "thinking")
    assert thinking == "I need to read the file.The file names a bird."
    call = next(e for e in events if e["type"] == "tool_call")
    assert call["name"] == "read" and json.loads(call["arguments"]) == {"file_path": str(target)}
    result = next(e for e in events if e["type"] == "tool_result")
    assert "pelican" in result["text"] and not result["is_error"]
    final = next(e for e in events if e["type"] == "final")
    assert final == {"type": "final", "reason": "answer", "turns": 2,
                     "text": "The secret word is pelican."}
    usage = events[-1]
    assert usage["type"] == "usage" and usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert "test-key" not in proc.stdout + proc.stderr


def test_human_output_labels_each_part(vllm, ws: Path) -> None:
    engine = vllm([
        {"reasoning": "Listing.", "tool_calls": [
            {"name": "ls", "arguments": json.dumps({"path": str(ws / "docs")})}]},
        {"content": "One file: file.txt."},
    ])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B",
               "What is in docs?"], cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[thinking]" in out and "Listing." in out
    assert f'tool call ls {{"path": "{ws / "docs"}"}}' in out
    assert "tool result ls (8 chars)" in out and "\nfile.txt\n" in out
    assert "One file: file.txt." in out
    assert "done: final answer after 2 turns" in out
    assert "prompt +" in out and "completion tokens" in out


def test_without_tool_parser_says_so_and_answers(vllm, ws: Path) -> None:
    engine = vllm([{"content": "4"}], args=[])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B", "--json",
               "2+2?"], cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    events = events_of(proc.stdout)
    notices = [e for e in events if e["type"] == "notice"]
    assert len(notices) == 1
    assert "--enable-auto-tool-choice" in notices[0]["text"]
    assert "continuing without tools" in notices[0]["text"]
    assert next(e for e in events if e["type"] == "final")["text"] == "4"


def test_max_turns_stops_the_loop(vllm, ws: Path) -> None:
    engine = vllm([{"tool_calls": [{"name": "ls", "arguments": json.dumps({"path": str(ws)})}]}])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B",
               "--max-turns", "3", "loop"], cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("tool call ls") == 3
    assert "stopped: reached --max-turns 3 without a final answer" in proc.stdout


def test_bad_tool_arguments_are_fed_back_and_the_model_recovers(vllm, ws: Path) -> None:
    engine = vllm([
        {"tool_calls": [{"name": "read", "arguments": '{"file_path": "docs/file.txt"}'}]},
        {"tool_calls": [{"name": "cat", "arguments": "{}"}]},
        {"content": "I could not read it."},
    ])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B", "--json",
               "read"], cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    results = [e for e in events_of(proc.stdout) if e["type"] == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True]
    assert "must be an absolute path" in results[0]["text"]
    assert "unknown tool 'cat'" in results[1]["text"]


def test_gpt_oss_goes_through_the_responses_api(vllm, ws: Path) -> None:
    engine = vllm([
        {"reasoning": "Look first.",
         "tool_calls": [{"name": "glob", "arguments": json.dumps({"pattern": "**/*.txt"})}]},
        {"content": "Found docs/file.txt."},
    ], model="openai/gpt-oss-20b")
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--json", "find text files"],
              cwd=ws, env={"PI_API_KEY": "test-key"})
    assert proc.returncode == 0, proc.stderr
    events = events_of(proc.stdout)
    assert events[0]["api"] == "responses" and events[0]["model"] == "openai/gpt-oss-20b"
    assert "".join(e["text"] for e in events if e["type"] == "thinking") == "Look first."
    result = next(e for e in events if e["type"] == "tool_result")
    assert str(ws / "docs" / "file.txt") in result["text"]
    assert next(e for e in events if e["type"] == "final")["text"] == "Found docs/file.txt."
    assert "POST /v1/responses" in engine.log() or "/v1/responses" in engine.log()


def test_wrong_key_missing_key_and_endpoint_down(vllm, ws: Path) -> None:
    engine = vllm([{"content": "x"}])
    url = f"{engine.base_url}/v1"
    env = {k: v for k, v in os.environ.items() if k != "PI_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "gpumod.cli.main", "prompt", "--base-url",
                           url, "--model", "m", "hi"], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: the endpoint {url} needs an API key and "
                                  "PI_API_KEY is not set")
    proc = pi(["--base-url", url, "--model", "m", "hi"], cwd=ws,
              env={"PI_API_KEY": "nope-123"})
    assert proc.returncode == 2 and "refused the key in PI_API_KEY" in proc.stderr
    assert "nope-123" not in proc.stdout + proc.stderr
    down = f"http://127.0.0.1:{free_port()}/v1"
    proc = pi(["--base-url", down, "--model", "m", "hi"], cwd=ws, env={"PI_API_KEY": "k"})
    assert proc.returncode == 7
    assert proc.stderr.splitlines()[0].startswith(f"error: cannot reach {down}")
    assert "Traceback" not in proc.stderr


def test_named_deployment_from_the_store(vllm, ws: Path, gpumod_home: Path) -> None:
    engine = vllm([{"content": "Hello from qwen."}], args=[*PARSERS, "--served-model-name",
                                                           "qwen-small"])
    from gpumod.spec import ServiceSpec
    from gpumod.store import services
    from gpumod.store.db import open_store

    services.insert(open_store(), ServiceSpec(
        name="qwen", host="local", engine="vllm", model="Qwen/Qwen3-8B", port=engine.port,
        args=("--served-model-name", "qwen-small")))
    proc = pi(["qwen", "hi", "--pod", "local"], cwd=ws,
              env={"PI_API_KEY": "test-key", "GPUMOD_HOME": str(gpumod_home)})
    assert proc.returncode == 0, proc.stderr
    assert f"model qwen-small at http://127.0.0.1:{engine.port}/v1" in proc.stdout
    assert "Hello from qwen." in proc.stdout


def test_interactive_session_keeps_history(vllm, ws: Path) -> None:
    engine = vllm([{"content": "Nice to meet you."}, {"content": "You are Ada."}])
    proc = pi(["--base-url", f"{engine.base_url}/v1", "--model", "Qwen/Qwen3-8B", "-i",
               "--json", "I am Ada."], cwd=ws, env={"PI_API_KEY": "test-key"},
              stdin="Who am I?\n")
    assert proc.returncode == 0, proc.stderr
    finals = [e["text"] for e in events_of(proc.stdout) if e["type"] == "final"]
    assert finals == ["Nice to meet you.", "You are Ada."]
    usage = [e for e in events_of(proc.stdout) if e["type"] == "usage"]
    # the second request carried the whole conversation, so it had more prompt tokens
    assert usage[1]["prompt_tokens"] > usage[0]["prompt_tokens"]
