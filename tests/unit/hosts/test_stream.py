"""Transport.stream() on this machine (LocalTransport) and in MockTransport."""

from __future__ import annotations

import os
import time

import pytest

from gpumod.errors import HostUnreachableError, UsageError
from gpumod.hosts.transports import LocalTransport, MockTransport


def test_local_stream_lines_exit_code_and_stdin(tmp_path):
    t = LocalTransport()
    with t.stream(["sh", "-c", 'IFS= read -r s; echo "got $s"; echo oops >&2; exit 3'],
                  input="token\n") as out:
        lines = list(out.iter_lines())
    assert lines == ["got token", "oops"] and out.returncode == 3


def test_local_stream_left_early_stops_the_process(tmp_path):
    pid_file = tmp_path / "pid"
    t = LocalTransport()
    with t.stream(["sh", "-c", f'echo $$ > {pid_file}; echo ready; exec sleep 30']) as out:
        for line in out.iter_lines():
            assert line == "ready"
            break
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_local_stream_interrupted_stops_the_process(tmp_path):
    pid_file = tmp_path / "pid"
    t = LocalTransport()
    with pytest.raises(KeyboardInterrupt), \
            t.stream(["sh", "-c", f'echo $$ > {pid_file}; echo ready; exec sleep 30']) as out:
        for _ in out.iter_lines():
            raise KeyboardInterrupt
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_local_program_not_installed_reads_as_run_answers_it():
    t = LocalTransport()
    ran = t.run(["gpumod-no-such-program"])
    with t.stream(["gpumod-no-such-program"]) as out:
        lines = list(out.iter_lines())
    assert out.returncode == ran.returncode == 127
    assert lines == ["gpumod-no-such-program: command not found"]


def test_local_argument_over_the_kernel_limit_is_a_usage_error():
    t = LocalTransport()
    with pytest.raises(UsageError) as err:
        t.run(["printf", "%s", "x" * 200_000])
    assert "131,072 bytes per argument" in err.value.message
    with pytest.raises(UsageError), t.stream(["printf", "%s", "x" * 200_000]):
        pass


def test_mock_stream_uses_the_handler_and_its_errors():
    def handler(argv, stdin):
        if argv[0] == "down":
            raise HostUnreachableError("mock: down")
        return 4, "a\nb\n", "c\n"

    t = MockTransport(handler)
    with t.stream(["tail"]) as out:
        assert list(out.iter_lines()) == ["a", "b", "c"]
    assert out.returncode == 4 and t.calls == [(("tail",), None)]
    with pytest.raises(HostUnreachableError), t.stream(["down"]):
        pass
