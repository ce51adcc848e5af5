"""The fake vLLM over real loopback HTTP, with httpx and the real openai client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from gpumod.testing import fake_nvidia_smi as smi
from gpumod.testing.harness import FakeVLLM, free_port, port_open

H100_MIB = 81559


@pytest.fixture
def gpu_state(tmp_path):
    return smi.write_state(tmp_path / "gpus.json", ["h100", "h100"])


@pytest.fixture
def engines(tmp_path, gpu_state):
    started: list[FakeVLLM] = []

    def start(*args, model="org/tiny", env=None, ready=True, **kw):
        e = FakeVLLM(model, args, env=env, gpu_state=gpu_state,
                     log_path=tmp_path / f"vllm-{len(started)}.log", **kw)
        started.append(e)
        return e.wait_ready() if ready else e

    yield start
    for e in started:
        e.stop(grace=2)


def used_mib(state, index=0):
    return smi.gpu_memory(smi.read_state(state))[index]["used_mib"]


def test_startup_logs_memory_and_port_timing(engines, gpu_state):
    e = engines("--max-model-len", "16384", env={"FAKE_VLLM_STARTUP_SECONDS": "1.0",
                                                  "FAKE_VLLM_WEIGHTS_GIB": "4"}, ready=False)
    time.sleep(0.5)
    assert e.proc.poll() is None
    assert not port_open(e.port)  # still "loading": the port is not open yet
    e.wait_ready()
    log = e.log()
    total = H100_MIB / 1024
    kv = 0.9 * total - 4 - 1.0 - 0.25
    assert "Model loading took 4.0000 GiB" in log
    assert f"Available KV cache memory: {kv:.2f} GiB" in log
    tokens = int(kv * 1024**3 / 131072) // 16 * 16
    assert f"GPU KV cache size: {tokens:,} tokens" in log
    assert f"Maximum concurrency for 16,384 tokens per request: {tokens / 16384:.2f}x" in log
    assert re.search(r"Graph capturing finished in \d+ secs, took 0\.25 GiB", log)
    assert httpx.get(e.base_url + "/health").status_code == 200
    # nvidia-smi shows util x total on GPU 0 only
    assert used_mib(gpu_state, 0) == int(0.9 * H100_MIB)
    assert used_mib(gpu_state, 1) == 0
    models = httpx.get(e.base_url + "/v1/models").json()
    assert models["data"][0]["id"] == "org/tiny"
    assert models["data"][0]["max_model_len"] == 16384


def test_free_memory_refusal_and_colocation(engines, gpu_state):
    a = engines("--gpu-memory-utilization", "0.45")
    b = engines("--gpu-memory-utilization", "0.45", "--served-model-name", "b")
    assert used_mib(gpu_state) == 2 * int(0.45 * H100_MIB)
    c = engines("--gpu-memory-utilization", "0.2", ready=False)
    assert c.wait() == 1
    free = (H100_MIB - 2 * int(0.45 * H100_MIB)) / 1024
    assert (f"ValueError: Free memory on device cuda:0 ({free:.2f}/{H100_MIB / 1024:.2f} GiB) "
            f"on startup is less than desired GPU memory utilization (0.2, "
            f"{0.2 * H100_MIB / 1024:.2f} GiB)") in c.log()
    assert not port_open(c.port)
    assert used_mib(gpu_state) == 2 * int(0.45 * H100_MIB)  # the refused one left nothing
    assert a.proc.poll() is None and b.proc.poll() is None


def test_tensor_parallel_needs_visible_gpus(engines, gpu_state):
    e = engines("-tp", "2", env={"CUDA_VISIBLE_DEVICES": "1"}, ready=False)
    assert e.wait() == 1
    assert "World size (2) is larger than the number of available GPUs (1)" in e.log()
    ok = engines("--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5",
                 env={"CUDA_VISIBLE_DEVICES": "1,0"})
    assert used_mib(gpu_state, 0) == used_mib(gpu_state, 1) == int(0.5 * H100_MIB)
    assert "Model loading took 0.5000 GiB" in ok.log()  # 1 GiB of weights split over 2


def test_no_gpu_state_fails_like_a_cpu_box(tmp_path):
    env = {"GPUMOD_FAKE_GPU_STATE": str(tmp_path / "absent.json")}
    e = FakeVLLM("m", env=env, log_path=tmp_path / "x.log")
    assert e.wait() == 1
    assert "Failed to infer device type" in e.log()
    e.stop()


def test_api_key(engines):
    e = engines(env={"VLLM_API_KEY": "s3cret"})
    r = httpx.get(e.base_url + "/v1/models")
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    r = httpx.get(e.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.get(e.base_url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert httpx.get(e.base_url + "/health").status_code == 200
    assert httpx.get(e.base_url + "/metrics").status_code == 200
    client = openai.OpenAI(base_url=e.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    good = openai.OpenAI(base_url=e.base_url + "/v1", api_key="s3cret", max_retries=0)
    reply = good.chat.completions.create(model="org/tiny",
                                         messages=[{"role": "user", "content": "ping"}])
    assert reply.choices[0].message.content == "Echo: ping"
    assert "s3cret" not in e.log()


def test_cli_key_flag_wins_and_unknown_model(engines):
    e = engines("--api-key", "k1", "--served-model-name", "alias")
    client = openai.OpenAI(base_url=e.base_url + "/v1", api_key="k1", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="org/tiny",
                                       messages=[{"role": "user", "content": "x"}])
    assert client.models.list().data[0].id == "alias"


SCRIPT = [
    {"reasoning": "I should list the files.", "content": "",
     "tool_calls": [{"name": "ls", "arguments": "{\"path\": \"/tmp\", \"all\": true}"}]},
    {"reasoning": "Done.", "content": "There are 3 files."},
]
TOOLS = [{"type": "function", "function": {"name": "ls", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}}}}]


def test_scripted_stream_tool_calls_and_reasoning(engines, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    e = engines("--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                "--reasoning-parser", "deepseek_r1", env={"FAKE_VLLM_SCRIPT": str(script)})
    client = openai.OpenAI(base_url=e.base_url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="org/tiny", messages=[{"role": "user", "content": "list /tmp"}], tools=TOOLS,
        stream=True, stream_options={"include_usage": True})
    reasoning, content, calls, finish, usage = "", "", {}, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            d = choice.delta
            reasoning += getattr(d, "reasoning_content", None) or ""
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or tc.id
                slot["name"] += (tc.function.name or "") if tc.function else ""
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    assert reasoning == "I should list the files."
    assert content == ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "ls" and calls[0]["id"].startswith("chatcmpl-tool-")
    assert json.loads(calls[0]["arguments"]) == {"path": "/tmp", "all": True}
    assert finish == "tool_calls"
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # second turn, non-streamed
    reply = client.chat.completions.create(model="org/tiny", tools=TOOLS, messages=[
        {"role": "user", "content": "list /tmp"},
        {"role": "assistant", "tool_calls": [{"id": calls[0]["id"], "type": "function",
                                              "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "a b c"}])
    msg = reply.choices[0].message
    assert msg.content == "There are 3 files."
    assert msg.model_extra["reasoning_content"] == "Done."
    assert reply.choices[0].finish_reason == "stop"
    # the last turn repeats
    again = client.chat.completions.create(model="org/tiny",
                                           messages=[{"role": "user", "content": "?"}])
    assert again.choices[0].message.content == "There are 3 files."
    metrics = httpx.get(e.base_url + "/metrics").text
    assert re.search(r'vllm:prompt_tokens_total\{engine="0",model_name="org/tiny"\} [1-9]', metrics)
    assert 'vllm:request_success_total{engine="0",model_name="org/tiny",' \
           'finished_reason="tool_calls"} 1.0' in metrics


def test_reasoning_without_parser_stays_in_content(engines, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"reasoning": "hmm", "content": "yes"}]))
    e = engines(env={"FAKE_VLLM_SCRIPT": str(script)})
    r = httpx.post(e.base_url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "q"}]}).json()
    msg = r["choices"][0]["message"]
    assert msg["content"] == "<think>\nhmm\n</think>\n\nyes"
    assert "reasoning_content" not in msg


def test_tools_without_parser_is_400(engines):
    e = engines()
    client = openai.OpenAI(base_url=e.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="org/tiny", tools=TOOLS,
                                       messages=[{"role": "user", "content": "ls"}])
    assert info.value.status_code == 400
    assert ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
            "to be set") in str(info.value)
    # tool_choice="none" is fine without a parser
    ok = client.chat.completions.create(model="org/tiny", tools=TOOLS, tool_choice="none",
                                        messages=[{"role": "user", "content": "ls"}])
    assert ok.choices[0].message.content == "Echo: ls"


def test_completions_and_responses(engines):
    e = engines()
    client = openai.OpenAI(base_url=e.base_url + "/v1", api_key="x", max_retries=0)
    c = client.completions.create(model="org/tiny", prompt="one two three", max_tokens=2)
    assert c.choices[0].text == " Echo: one" and c.choices[0].finish_reason == "length"
    r = client.responses.create(model="org/tiny", input="hello")
    assert r.output_text == "Echo: hello"
    assert r.status == "completed" and r.usage.total_tokens > 0


def test_sleep_requires_dev_mode(engines):
    e = engines("--enable-sleep-mode")
    for path in ("/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache"):
        assert httpx.post(e.base_url + path).status_code == 404
    assert httpx.get(e.base_url + "/is_sleeping").status_code == 404


def test_sleep_requires_sleep_mode_flag(engines):
    e = engines(env={"VLLM_SERVER_DEV_MODE": "1"})
    r = httpx.post(e.base_url + "/sleep?level=1")
    assert r.status_code == 500 and "Sleep mode is not enabled" in r.text
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": False}


def chat(e, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(e.base_url + "/v1/chat/completions", headers=headers,
                      json={"messages": [{"role": "user", "content": "2+2?"}]})


def test_sleep_level1_frees_memory_and_wakes(engines, gpu_state):
    e = engines("--enable-sleep-mode", "--api-key", "k",
                env={"VLLM_SERVER_DEV_MODE": "1", "FAKE_VLLM_WEIGHTS_GIB": "8"})
    full = int(0.9 * H100_MIB)
    assert used_mib(gpu_state) == full
    # dev endpoints are open even with a key
    assert httpx.post(e.base_url + "/sleep?level=1").status_code == 200
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": True}
    assert used_mib(gpu_state) == 512
    r = chat(e, "k")
    assert r.status_code == 503
    assert "Sleep mode freed" in e.log() and "seconds to fall asleep" in e.log()
    assert httpx.post(e.base_url + "/wake_up").status_code == 200
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": False}
    assert used_mib(gpu_state) == full
    assert chat(e, "k").json()["choices"][0]["message"]["content"] == "Echo: 2+2?"


def test_sleep_level2_needs_reload_before_correct_answers(engines, gpu_state):
    e = engines("--enable-sleep-mode",
                env={"VLLM_SERVER_DEV_MODE": "1", "FAKE_VLLM_WEIGHTS_GIB": "8"})
    full = int(0.9 * H100_MIB)
    assert httpx.post(e.base_url + "/sleep", params={"level": "2"}).status_code == 200
    assert used_mib(gpu_state) == 512
    # the documented sequence: weights, reload, kv cache, reset prefix cache
    assert httpx.post(e.base_url + "/wake_up", params={"tags": "weights"}).status_code == 200
    assert used_mib(gpu_state) == 512 + 8 * 1024
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": True}
    r = httpx.post(e.base_url + "/collective_rpc", json={"method": "reload_weights"})
    assert r.status_code == 200 and r.json() == {"results": [None]}
    assert httpx.post(e.base_url + "/wake_up", params={"tags": "kv_cache"}).status_code == 200
    assert httpx.post(e.base_url + "/reset_prefix_cache").status_code == 200
    assert used_mib(gpu_state) == full
    assert chat(e).json()["choices"][0]["message"]["content"] == "Echo: 2+2?"
    # without the reload the canary catches garbage
    httpx.post(e.base_url + "/sleep?level=2")
    httpx.post(e.base_url + "/wake_up")
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": False}
    assert chat(e).json()["choices"][0]["message"]["content"].startswith("!!!!")
    assert httpx.post(e.base_url + "/wake_up", params={"tags": "bogus"}).status_code == 400
    assert httpx.post(e.base_url + "/collective_rpc", json={}).status_code == 400


def test_sleep_that_keeps_memory(engines, gpu_state):
    e = engines("--enable-sleep-mode",
                env={"VLLM_SERVER_DEV_MODE": "1", "FAKE_VLLM_SLEEP_KEEPS_MEMORY": "1"})
    full = int(0.9 * H100_MIB)
    assert httpx.post(e.base_url + "/sleep?level=1").status_code == 200
    assert httpx.get(e.base_url + "/is_sleeping").json() == {"is_sleeping": True}
    assert used_mib(gpu_state) == full  # the bug: nothing was freed


def test_unknown_flag_exits_2(tmp_path, gpu_state):
    out = subprocess.run([sys.executable, "-m", "gpumod.testing.fake_vllm", "serve", "m",
                          "--no-such-flag", "3"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GPUMOD_FAKE_GPU_STATE": str(gpu_state)})
    assert out.returncode == 2
    assert "error: unrecognized arguments: --no-such-flag 3" in out.stderr
    assert smi.read_state(gpu_state)["processes"] == []


def test_startup_failure_message(engines, gpu_state):
    e = engines(env={"FAKE_VLLM_FAIL": "CUDA out of memory on the imaginary card"},
                ready=False)
    assert e.wait() == 1
    assert e.log().rstrip().endswith("RuntimeError: CUDA out of memory on the imaginary card")
    assert "Traceback (most recent call last):" in e.log()
    assert used_mib(gpu_state) == 0


def test_sigterm_exits_0_and_unregisters(engines, gpu_state):
    e = engines()
    assert used_mib(gpu_state) > 0
    os.kill(e.pid, signal.SIGTERM)
    assert e.wait(timeout=10) == 0
    assert smi.read_state(gpu_state)["processes"] == []
    # TERM during startup also cleans up
    slow = engines(env={"FAKE_VLLM_STARTUP_SECONDS": "5"}, ready=False)
    deadline = time.monotonic() + 10
    while not smi.read_state(gpu_state)["processes"] and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(slow.pid, signal.SIGTERM)
    assert slow.wait(timeout=10) == 0
    assert smi.read_state(gpu_state)["processes"] == []


def test_ignore_term_needs_kill(engines, gpu_state):
    e = engines(env={"FAKE_VLLM_IGNORE_TERM": "1"})
    os.kill(e.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        e.wait(timeout=0.7)
    assert httpx.get(e.base_url + "/health").status_code == 200
    os.kill(e.pid, signal.SIGKILL)
    assert e.wait(timeout=5) == -signal.SIGKILL
    # the record remains, but nvidia-smi no longer counts a dead pid
    assert used_mib(gpu_state) == 0


def test_port_in_use_fails_fast(tmp_path, gpu_state):
    port = free_port()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        e = FakeVLLM("m", port=port, gpu_state=gpu_state, log_path=tmp_path / "p.log")
        assert e.wait() == 1
        assert "Address already in use" in e.log()
        e.stop()
