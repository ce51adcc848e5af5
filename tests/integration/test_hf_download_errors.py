"""A failed Hugging Face download says why: `pi start` runs the real `hf` CLI on the host.

The hub is a local HTTP server (HF_ENDPOINT) answering the way huggingface.co does
(status and X-Error-Code headers), or a host name that cannot resolve (.invalid).
The user sees the cause and what to do, never the CLI's "set HF_DEBUG=1" line.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from gpumod.hf_errors import download_error
from tests.support.cli import run_cli

# What huggingface.co sends for each case (the hub client maps these headers).
ANSWERS = {
    "missing": (404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}),
    "token": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
    "gated": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message":
                    "Access to model a/b is restricted and you are not in the authorized list."}),
    "nofile": (404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}),
}


@pytest.fixture
def hub():
    """A local stand-in for huggingface.co; `.case` picks its answer."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            status, headers = ANSWERS[server.case]
            body = json.dumps({"error": headers["X-Error-Message"]}).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.case = "missing"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def host_env(tmp_path, monkeypatch):
    """local with a llama-server stand-in (never reached: the download fails first) and
    the real `hf` CLI of this Python on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "llama-server").chmod(0o755)
    hf = Path(sys.executable).parent / "hf"
    if not hf.exists():
        pytest.fail(f"the hf CLI (huggingface_hub, a dependency of gpumod) is not at {hf}")
    monkeypatch.setenv("PATH", f"{bin_dir}:{hf.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PI_API_KEY", "sk-test-0123456789abcdef")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def start(model: str):
    return run_cli("start", model, "--name", "t", "--engine", "llamacpp", "-q")


@pytest.mark.parametrize(("case", "code", "says"), [
    ("missing", 3, "404: no such model"),
    ("token", 2, "401: check HF_TOKEN"),
    ("gated", 2, "403: a/b is gated"),
    ("nofile", 3, "404: no file x.gguf in a/b"),
])
def test_download_failure_shows_its_cause(hub, host_env, monkeypatch, case, code, says):
    hub.case = case
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
    result = start("a/b:x.gguf")
    assert result.code == code, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == [f"error: downloading a/b/x.gguf on local failed: {says}"], result.stderr
    assert "HF_DEBUG" not in result.stderr
    assert "hint: " in result.stderr
    assert json.loads(run_cli("list", "--json").stdout) == []  # nothing recorded


@pytest.mark.slow
def test_unreachable_hub_says_so(host_env, monkeypatch):
    # .invalid never resolves (RFC 6761): what an offline machine sees; hf retries ~25 s
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.gpumod-test.invalid")
    result = start("a/b:x.gguf")
    assert result.code == 5, result.output
    assert ("error: downloading a/b/x.gguf on local failed: cannot reach Hugging Face: "
            "name or service not known") in result.stderr
    assert "HF_DEBUG" not in result.stderr


def test_the_cli_output_is_read_for_its_cause():
    # lines as `hf download` prints them (colours included) when the network is down
    offline = ["No local file found. Retrying..",
               "'[Errno -2] Name or service not known' thrown while requesting HEAD https://x",
               "Retrying in 1s [Retry 1/5].",
               "\x1b[1m\x1b[31mError: Local entry not found. [Errno -2] Name or service not "
               "known\x1b[0m",
               "\x1b[90mHint: set HF_DEBUG=1 as environment variable for full traceback.\x1b[0m"]
    err = download_error("a/b", None, offline, where="pod dc1", code=1)
    assert err.exit_code == 5
    assert err.message == ("downloading a/b on pod dc1 failed: cannot reach Hugging Face: "
                           "name or service not known")
    full = ["\x1b[1m\x1b[31mError: No space left on device (os error 28)\x1b[0m"]
    assert "no space left" in download_error("a/b", None, full, where="x", code=1).message
    other = ["Error: something new", "Hint: set HF_DEBUG=1 as environment variable"]
    err = download_error("a/b", None, other, where="local", code=1)
    assert err.message == "downloading a/b on local failed: something new"


def test_a_model_lookup_offline_names_the_cause(tmp_path):
    # huggingface_hub reads HF_ENDPOINT when imported: a fresh process, as a user runs it
    import subprocess

    env = {**os.environ, "HF_ENDPOINT": "http://hub.gpumod-test.invalid",
           "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "gpumod.cli.main", "model", "info", "a/b"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 5, result.stderr
    assert result.stderr.splitlines()[0] == ("error: cannot reach Hugging Face for a/b: "
                                             "name or service not known")
