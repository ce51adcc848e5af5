"""HTTP to a service from its host: in-process for the local host, the script on pods.

A real HTTP server on loopback records what it was sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from gpumod.errors import EngineError
from gpumod.hosts.http import Endpoint
from gpumod.hosts.transports.local import LocalTransport


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                          "body": self.rfile.read(length).decode()})
        data = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class NoCommands(LocalTransport):
    """The local host, where running a command is a failure of the test."""

    def run(self, argv, **kw):  # type: ignore[override]
        raise AssertionError(f"a command was run: {argv[:2]}")


def test_local_calls_run_in_process_with_the_key_from_the_env_file(server, tmp_path,
                                                                   monkeypatch):
    env_file = tmp_path / "secrets.env"
    env_file.write_text("VLLM_API_KEY='s3cret-key'\n")
    env_file.chmod(0o600)
    monkeypatch.setattr(LocalTransport, "run", NoCommands.run)  # no python3 per call
    ep = Endpoint(LocalTransport(), server.server_address[1], key_file=str(env_file))
    answer = ep.request("POST", "/sleep?level=1", {"x": 1}, timeout=5)
    assert answer.status == 200 and answer.json() == {"ok": True}
    assert _Recorder.seen == [{"path": "/sleep?level=1", "auth": "Bearer s3cret-key",
                               "body": '{"x": 1}'}]


def test_no_answer_is_status_zero_not_an_exception(monkeypatch):
    from tests.support.real import free_port

    monkeypatch.setattr(LocalTransport, "run", NoCommands.run)
    answer = Endpoint(LocalTransport(), free_port()).request("GET", "/health", timeout=2)
    assert answer.status == 0 and "Connection refused" in answer.describe()


def test_other_transports_run_the_same_code_as_a_script_on_the_host(server):
    class Counting(LocalTransport):  # stands for a pod's transport: commands on the host
        calls = 0

        def run(self, argv, **kw):  # type: ignore[override]
            Counting.calls += 1
            return super().run(argv, **kw)

    ep = Endpoint(Counting(), server.server_address[1])
    assert ep.request("POST", "/wake_up", timeout=5).status == 200
    assert Counting.calls == 1 and _Recorder.seen[0]["auth"] is None


def test_a_host_without_python3_is_a_clear_engine_error(server, monkeypatch):
    class NoPython(LocalTransport):
        def run(self, argv, **kw):  # type: ignore[override]
            return super().run(["sh", "-c", "exit 127"], **kw)

    with pytest.raises(EngineError, match="python3 is not installed"):
        Endpoint(NoPython(), server.server_address[1]).request("GET", "/health")
