"""SSHTransport against a real sshd on loopback."""

from __future__ import annotations

import time

import pytest

from gpumod.errors import AuthenticationError, HostUnreachableError
from gpumod.hosts.sshcmd import parse_ssh_command
from gpumod.hosts.transports.ssh import SSHTransport

pytestmark = pytest.mark.sshd


def transport(server) -> SSHTransport:
    return SSHTransport(parse_ssh_command(server.ssh_command), label="pod t")


def test_returns_real_exit_code_stdout_and_stderr(sshd):
    result = transport(sshd).run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_arguments_arrive_verbatim_never_reinterpreted_by_the_remote_shell(sshd, tmp_path):
    tricky = ["a b", "$(touch /tmp/pwned-gpumod)", "'q'", '"dq"', "x;y", "*", "~"]
    result = transport(sshd).run(["printf", "%s\\n", *tricky])
    assert result.stdout.splitlines() == tricky


def test_secret_travels_on_stdin_not_argv(sshd, tmp_path):
    target = tmp_path / "secret.txt"
    result = transport(sshd).run(["sh", "-c", 'umask 077; cat > "$1"', "sh", str(target)],
                                 input="hf_SECRET\n")
    assert result.ok
    assert target.read_text() == "hf_SECRET\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_connection_is_multiplexed(sshd):
    t = transport(sshd)
    t.run(["true"])  # opens the master
    start = time.perf_counter()
    for _ in range(5):
        assert t.run(["true"]).ok
    per_call = (time.perf_counter() - start) / 5
    import subprocess

    status = subprocess.run([*t.base_argv(), "-O", "check", t.target.destination],
                            capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stderr  # a live master serves the calls
    assert per_call < 5  # sanity only; speed is measured in bench/


def test_remote_environment_comes_from_the_pod(sshd):
    result = transport(sshd).run(["sh", "-c", 'echo "$GPUMOD_REMOTE_HOME"'])
    assert result.stdout.strip() == str(sshd.remote_root)


def test_host_down_is_a_typed_error_with_a_hint(sshd):
    sshd.stop()
    with pytest.raises(HostUnreachableError) as err:
        transport(sshd).run(["true"], timeout=20)
    assert "pod t" in err.value.message
    assert err.value.hint


def test_wrong_key_is_an_authentication_error(sshd, tmp_path):
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    command = sshd.ssh_command.replace(str(sshd.client_key), str(other))
    t = SSHTransport(parse_ssh_command(command.replace("ssh ", "ssh -o IdentitiesOnly=yes ", 1)),
                     label="pod t")
    with pytest.raises(AuthenticationError):
        t.run(["true"])


# ---------------------------------------------------------------------------- dropped links


def kill_sshd_after(server, seconds: float):
    import threading

    timer = threading.Timer(seconds, server.stop)
    timer.start()
    return timer


def test_sshd_killed_mid_command_is_host_unreachable_not_a_remote_exit_255(sshd):
    """A multiplexed ssh client exits 255 with no message when the pod's sshd dies."""
    t = transport(sshd)
    t.run(["true"])  # the master connection is up
    kill_sshd_after(sshd, 1.0)
    with pytest.raises(HostUnreachableError) as err:
        t.run(["sleep", "30"])
    assert err.value.message == "pod t: the SSH connection was lost"
    assert err.value.exit_code == 5


def test_a_remote_command_that_exits_255_itself_stays_a_remote_error(sshd):
    from gpumod.errors import RemoteCommandError

    t = transport(sshd)
    with pytest.raises(RemoteCommandError) as err:
        t.run(["sh", "-c", "exit 255"])
    assert err.value.returncode == 255
    with t.stream(["sh", "-c", "echo last words; exit 255"]) as out, \
            pytest.raises(RemoteCommandError):
        assert list(out.iter_lines()) == ["last words"]


# ---------------------------------------------------------------------------- stream()


def test_stream_gives_lines_as_they_come_then_the_exit_code(sshd):
    t = transport(sshd)
    seen: list[tuple[str, float]] = []
    began = time.monotonic()
    with t.stream(["sh", "-c", "echo one; echo err >&2; sleep 1; printf 'two\\rthree'; exit 7"]) \
            as out:
        for line in out.iter_lines(carriage_return=True):
            seen.append((line, time.monotonic() - began))
    assert [line for line, _ in seen] == ["one", "err", "two", "three"]
    assert seen[0][1] < seen[2][1] - 0.5  # the first line arrived before the command ended
    assert out.returncode == 7


def test_stream_input_reaches_stdin_and_bytes_arrive_unchanged(sshd):
    t = transport(sshd)
    with t.stream(["sh", "-c", "IFS= read -r s; printf '%s\\r\\n' \"$s\"; printf '\\377'"],
                  input="hf_SECRET\n") as out:
        data = b"".join(out.iter_bytes())
    assert data == b"hf_SECRET\r\n\xff" and out.returncode == 0


def test_stream_on_a_down_host_raises_what_run_raises(sshd):
    sshd.stop()
    t = transport(sshd)
    with pytest.raises(HostUnreachableError) as from_run:
        t.run(["true"], timeout=20)
    with pytest.raises(HostUnreachableError) as from_stream, t.stream(["true"]) as out:
        list(out.iter_lines())
    assert from_stream.value.message == from_run.value.message


def test_stream_raises_host_unreachable_when_sshd_dies_mid_stream(sshd):
    t = transport(sshd)
    lines: list[str] = []
    kill_sshd_after(sshd, 1.5)
    with pytest.raises(HostUnreachableError), \
            t.stream(["sh", "-c", "echo started; exec sleep 30"]) as out:
        for line in out.iter_lines():
            lines.append(line)
    assert lines == ["started"]


def test_leaving_a_stream_early_stops_the_local_ssh_client(sshd):
    t = transport(sshd)
    with t.stream(["sh", "-c", "echo go; exec sleep 30"]) as out:
        for line in out.iter_lines():
            assert line == "go"
            break
    began = time.monotonic()
    deadline = began + 10
    while _ssh_clients_running(t) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _ssh_clients_running(t)


def _ssh_clients_running(t) -> bool:
    """Our own non-master ssh client for this pod ("sleep 30" in its argv) is alive."""
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv and argv[0] == b"ssh" and t.target.destination.encode() in argv and \
                any(b"sleep 30" in a for a in argv) and state != "Z":
            return True
    return False


# ---------------------------------------------------------------------------- limits


def test_two_100k_arguments_over_ssh_are_a_usage_error_naming_the_limit(sshd):
    from gpumod.errors import UsageError

    t = transport(sshd)
    big = ["x" * 100_000, "y" * 100_000]
    with pytest.raises(UsageError) as err:
        t.run(["printf", "%s", *big])
    assert "too long to send over SSH" in err.value.message
    assert "131,071 bytes" in err.value.message and err.value.exit_code == 2
    with pytest.raises(UsageError), t.stream(["printf", "%s", *big]):
        pass
    assert t.run(["printf", "%s", "x" * 100_000]).stdout == "x" * 100_000  # under it: fine
