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
