"""HTTP to a service from its host: in-process for the local host (no interpreter per
call). A real HTTP server on loopback records what it was sent. The script a pod runs
(python3 on the host) is tested in tests/integration/test_host_scripts.py."""

from __future__ import annotations

import pytest

from gpumod.errors import EngineError
from gpumod.hosts.http import Endpoint
from gpumod.hosts.transports.local import LocalTransport
from tests.support.recorder import recording_server


@pytest.fixture
def server():
    with recording_server() as found:
        yield found


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
    port, seen = server
    ep = Endpoint(LocalTransport(), port, key_file=str(env_file))
    answer = ep.request("POST", "/sleep?level=1", {"x": 1}, timeout=5)
    assert answer.status == 200 and answer.json() == {"ok": True}
    assert seen == [{"path": "/sleep?level=1", "auth": "Bearer s3cret-key",
                     "body": '{"x": 1}'}]


def test_no_answer_is_status_zero_not_an_exception(monkeypatch):
    from tests.support.real import free_port

    monkeypatch.setattr(LocalTransport, "run", NoCommands.run)
    answer = Endpoint(LocalTransport(), free_port()).request("GET", "/health", timeout=2)
    assert answer.status == 0 and "Connection refused" in answer.describe()


def test_a_host_without_python3_is_a_clear_engine_error(server, monkeypatch):
    class NoPython(LocalTransport):
        def run(self, argv, **kw):  # type: ignore[override]
            return super().run(["sh", "-c", "exit 127"], **kw)

    with pytest.raises(EngineError, match="python3 is not installed"):
        Endpoint(NoPython(), server[0]).request("GET", "/health")
