"""Parsing the SSH command a provider shows."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.hosts.sshcmd import parse_ssh_command


def test_plain_user_at_host():
    t = parse_ssh_command("ssh root@1.2.3.4")
    assert (t.user, t.host, t.port, t.options) == ("root", "1.2.3.4", None, ())
    assert t.argv() == ["root@1.2.3.4"]


def test_options_are_kept_in_order_with_their_values():
    t = parse_ssh_command("ssh -p 2222 -i ~/.ssh/k root@1.2.3.4")
    assert t.options == ("-p", "2222", "-i", "~/.ssh/k")
    assert t.port == 2222


def test_attached_values_and_o_options():
    t = parse_ssh_command("ssh -p2222 root@h")
    assert t.port == 2222
    t = parse_ssh_command("ssh -o ProxyJump=bastion root@h")
    assert t.options == ("-o", "ProxyJump=bastion")
    assert t.host == "h"


def test_quoted_paths_with_spaces_survive():
    t = parse_ssh_command("ssh -i '/keys/my key' -l ubuntu gpu.example.com")
    assert t.options == ("-i", "/keys/my key", "-l", "ubuntu")
    assert (t.user, t.host) == ("ubuntu", "gpu.example.com")


def test_ssh_uri_with_port():
    t = parse_ssh_command("ssh ssh://root@10.0.0.5:2200")
    assert (t.user, t.host, t.port) == ("root", "10.0.0.5", 2200)


def test_combined_flags_and_tty_flags_dropped():
    t = parse_ssh_command("ssh -4At -p 22 root@h")
    assert t.options == ("-4", "-A", "-p", "22")


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("", "empty"),
        ("scp root@h", "must start with 'ssh'"),
        ("ssh", "names no host"),
        ("ssh -p", "needs a value"),
        ("ssh -p abc root@h", "invalid SSH port"),
        ("ssh -p 70000 root@h", "invalid SSH port"),
        ("ssh root@h nvidia-smi", "remote command"),
        ("ssh -N root@h", "not supported"),
        ("ssh -f root@h", "not supported"),
        ("ssh -o ControlPath=/tmp/x root@h", "managed by gpumod"),
        ("ssh 'root@h", "cannot parse"),
        ("ssh -Z root@h", "unknown ssh option"),
    ],
)
def test_bad_commands_get_one_clear_error(command, fragment):
    with pytest.raises(UsageError) as err:
        parse_ssh_command(command)
    assert fragment in err.value.message


def test_ssh_path_prefix_is_accepted():
    assert parse_ssh_command("/usr/bin/ssh root@h").host == "h"


# OpenSSH parses options after the destination too (ssh.c restarts getopt after the host),
# and the first word after it that is not an option starts the remote command.
@pytest.mark.parametrize(("command", "options", "port"), [
    ("ssh root@h -p 2300 -i KEY", ("-p", "2300", "-i", "KEY"), 2300),
    ("ssh root@h -p2300 -oUser=admin", ("-p", "2300", "-o", "User=admin"), 2300),
    ("ssh -i KEY root@h -p 2300", ("-i", "KEY", "-p", "2300"), 2300),
    ("ssh root@h -A -t", ("-A",), None),
    ("ssh root@h --", (), None),
])
def test_options_after_the_destination_are_taken_as_openssh_does(command, options, port):
    t = parse_ssh_command(command)
    assert (t.options, t.destination, t.port) == (options, "root@h", port)


@pytest.mark.parametrize("command", [
    "ssh root@h -p 2300 nvidia-smi",
    "ssh root@h -p 2300 -- -i KEY",        # after "--" everything is the command
    "ssh -- root@h -p 2300",               # "--" before the host ends option parsing
    "ssh root@h ls -p 2300",
])
def test_a_real_remote_command_is_still_refused(command):
    with pytest.raises(UsageError, match="remote command after the host"):
        parse_ssh_command(command)


def test_refused_options_after_the_destination_are_still_refused():
    with pytest.raises(UsageError, match="not supported"):
        parse_ssh_command("ssh root@h -N")
    with pytest.raises(UsageError, match="managed by gpumod"):
        parse_ssh_command("ssh root@h -o ControlMaster=no")
