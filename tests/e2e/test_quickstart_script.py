"""`bash scripts/quickstart.sh`, for real: a real answer, then fast and idempotent.

Runs the script as a user does, from the repository root, with its own GPUMOD_HOME and
the llama-server the set-up built (GPUMOD_LLAMA_SERVER, so nothing is built here). The
repository's .venv must exist (scripts/setup-dev.sh or a first quickstart made it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.real import llama_server_binary, require_real, tiny_gguf

pytestmark = [pytest.mark.llama, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path):
    if not (REPO / ".venv" / "bin" / "pi").exists():
        require_real("the repository's .venv", "it does not exist (run scripts/setup-dev.sh)")
    tiny_gguf()
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PI_", "OPENAI_", "HF_TOKEN"))}
    out.update(GPUMOD_HOME=str(tmp_path / "home"), GPUMOD_LLAMA_SERVER=llama_server_binary())
    yield out
    subprocess.run([str(REPO / ".venv/bin/pi"), "stop", "tiny"], env=out, capture_output=True,
                   timeout=60)


def quickstart(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)


def tiny(env: dict[str, str]) -> dict:
    listed = subprocess.run([str(REPO / ".venv/bin/pi"), "list", "--pod", "local", "--json"],
                            env=env, text=True, capture_output=True, timeout=60)
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["tiny"], rows  # one deployment, never a second copy
    return rows[0]


def answers(stdout: str) -> list[str]:
    return [line[3:].strip() for line in stdout.splitlines() if line.startswith("A: ")]


def test_quickstart_answers_then_reuses_then_restarts_a_crashed_one(env):
    first = quickstart(env)
    assert first.returncode == 0, first.stdout + first.stderr[-4000:]
    got = answers(first.stdout)
    assert len(got) == 2 and all(got), first.stdout  # openai client and pi prompt
    row = tiny(env)
    assert row["state"] == "running" and row["engine"] == "llamacpp"
    assert row["url"] in first.stdout and "pi stop tiny" in first.stdout
    assert "export OPENAI_BASE_URL=" + row["url"] in first.stdout
    key = (Path(env["GPUMOD_HOME"]) / "quickstart-api-key").read_text().strip()
    assert oct((Path(env["GPUMOD_HOME"]) / "quickstart-api-key").stat().st_mode & 0o777) == \
        "0o600"
    assert key not in first.stdout + first.stderr  # the key itself is never printed
    for step in ("[1/6]", "[3/6] llama-server", "[6/6] asking tiny"):
        assert step in first.stderr

    began = time.monotonic()
    second = quickstart(env)
    assert second.returncode == 0, second.stdout + second.stderr[-4000:]
    assert "already running and healthy: reusing it" in second.stderr
    assert tiny(env)["pid"] == row["pid"]  # the same engine, not a second copy
    assert len(answers(second.stdout)) == 2
    assert time.monotonic() - began < 120

    os.killpg(row["pid"], signal.SIGKILL)  # the engine crashes
    deadline = time.monotonic() + 10
    while tiny(env)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    third = quickstart(env)
    assert third.returncode == 0, third.stdout + third.stderr[-4000:]
    assert "tiny is crashed: restarting it" in third.stderr
    restarted = tiny(env)
    assert restarted["state"] == "running" and restarted["pid"] != row["pid"]
    assert len(answers(third.stdout)) == 2


def test_a_tiny_started_with_another_key_is_restarted_with_this_one(env):
    assert quickstart(env).returncode == 0
    env = {**env, "PI_API_KEY": "sk-another-key-0123456789"}
    again = quickstart(env)
    assert again.returncode == 0, again.stdout + again.stderr[-4000:]
    assert "tiny is running with another API key: restarting it" in again.stderr
    assert "(PI_API_KEY as set in your shell)" in again.stdout
