"""SSH argv building: multiplexing, timeouts, enforced host key checks, quoting."""

from __future__ import annotations

import shlex

from gpumod.hosts.sshcmd import parse_ssh_command
from gpumod.hosts.transports.ssh import SSHTransport, raise_for_ssh_failure


def test_command_argv_multiplexes_and_quotes():
    t = SSHTransport(parse_ssh_command("ssh -p 2222 -i /k root@1.2.3.4"))
    argv = t.command_argv(["echo", "a b", "$(id)"])
    joined = " ".join(argv)
    assert "ControlMaster=auto" in joined
    assert "ControlPersist=" in joined
    assert "ConnectTimeout=10" in joined
    assert "ServerAliveInterval=15" in joined
    assert "BatchMode=yes" in joined
    # the remote command is one argument, quoted so the remote shell splits it back exactly
    assert argv[-2] == "root@1.2.3.4"
    assert argv[-3] == "--"
    assert shlex.split(argv[-1]) == ["echo", "a b", "$(id)"]


def test_host_key_checking_cannot_be_disabled_by_user_options():
    t = SSHTransport(parse_ssh_command("ssh -o StrictHostKeyChecking=no root@h"))
    argv = t.base_argv()
    ours = argv.index("StrictHostKeyChecking=accept-new")
    theirs = argv.index("StrictHostKeyChecking=no")
    assert ours < theirs  # OpenSSH uses the first value given


def test_user_options_come_before_our_defaults_so_they_win():
    t = SSHTransport(parse_ssh_command("ssh -o ConnectTimeout=3 root@h"))
    argv = t.base_argv()
    assert argv.index("ConnectTimeout=3") < argv.index("ConnectTimeout=10")


def test_interactive_has_tty_and_no_batch_mode():
    t = SSHTransport(parse_ssh_command("ssh root@h"))
    argv = t.interactive_argv()
    assert "-tt" in argv
    assert "BatchMode=yes" not in " ".join(argv)


def test_ssh_failures_are_classified():
    import pytest

    from gpumod.errors import AuthenticationError, HostUnreachableError, TransportError

    cases = [
        ("ssh: connect to host 1.2.3.4 port 22: Connection refused", HostUnreachableError),
        ("ssh: connect to host 1.2.3.4 port 22: Connection timed out", HostUnreachableError),
        ("ssh: Could not resolve hostname nope: Name or service not known", HostUnreachableError),
        ("root@1.2.3.4: Permission denied (publickey).", AuthenticationError),
        ("Host key verification failed.", AuthenticationError),
        ("something odd", TransportError),
    ]
    for stderr, error in cases:
        with pytest.raises(error) as err:
            raise_for_ssh_failure("pod x", stderr)
        assert err.value.message.startswith("pod x: ")
        assert err.value.hint
