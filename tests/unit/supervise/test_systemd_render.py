"""Unit rendering: values validated/escaped, no directive injection, secrets never inline."""

from __future__ import annotations

import pytest

from gpumod.errors import UsageError
from gpumod.hosts.transports.mock import MockTransport
from gpumod.supervise.base import LaunchPlan
from gpumod.supervise.systemd import SystemdSupervisor, state_from_properties
from gpumod.supervise.units import (
    ENGINE_TEMPLATES,
    UnitOptions,
    env_file_line,
    quote_exec_arg,
    render_unit,
)


def plan(**kw) -> LaunchPlan:
    base = dict(service="chat", argv=("/bin/sleep", "100"), env={"A": "1"},
                service_dir="/srv/gpumod/services/chat")
    base.update(kw)
    return LaunchPlan(**base)


def directives(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines()
            if line and not line.startswith(("#", "["))]


@pytest.mark.parametrize("engine", ENGINE_TEMPLATES)
def test_every_engine_has_restart_on_failure_and_env_file(engine: str) -> None:
    text = render_unit(plan(), UnitOptions(engine=engine))
    assert "Restart=on-failure" in text
    assert "EnvironmentFile=-/srv/gpumod/services/chat/secrets.env" in text
    assert 'ExecStart="/bin/sleep" "100"' in text or engine == "docker"


@pytest.mark.parametrize("field,value", [
    ("argv", ("/bin/sleep", "1\nExecStartPre=/bin/rm -rf /")),
    ("env", {"A": "x\nExecStartPre=/bin/true"}),
    ("env", {"A\nB": "x"}),
    ("env", {"A=B": "x"}),
    ("service_dir", "/srv/x\nUser=root"),
    ("service_dir", "/srv/with space"),
    ("workdir", "/tmp/a\rb"),
])
def test_newline_or_bad_value_cannot_inject(field: str, value) -> None:
    with pytest.raises(UsageError):
        render_unit(plan(**{field: value}))


def test_service_name_with_newline_is_refused() -> None:
    with pytest.raises(UsageError):
        render_unit(plan(service="chat\nUser=root"))


def test_quoting_follows_systemd_rules() -> None:
    assert quote_exec_arg('a b"c') == '"a b\\"c"'
    assert quote_exec_arg("$HOME") == '"$$HOME"'
    assert quote_exec_arg("100%") == '"100%%"'
    assert quote_exec_arg("back\\slash") == '"back\\\\slash"'
    with pytest.raises(UsageError):
        quote_exec_arg(";")
    text = render_unit(plan(env={"K": 'v "q" $X 50%'}))
    assert 'Environment="K=v \\"q\\" $X 50%%"' in text


def test_relative_command_is_refused() -> None:
    with pytest.raises(UsageError, match="absolute"):
        render_unit(plan(argv=("vllm", "serve")))


def test_secret_values_never_reach_the_unit() -> None:
    calls = []

    def handler(argv, stdin):
        calls.append((argv, stdin))
        if argv[:2] == ("systemctl", "--user") and "show" in argv:
            return 0, "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\n", ""
        return 0, "/home/u/.config/systemd/user/gpumod-chat.service\n", ""

    sup = SystemdSupervisor(MockTransport(handler), scope="user")
    pid = sup.start(plan(), {"VLLM_API_KEY": "sk-very-secret"})
    assert pid == 42
    unit_inputs = [i for a, i in calls if i and "[Service]" in i]
    assert unit_inputs and all("sk-very-secret" not in i for i in unit_inputs)
    secret_inputs = [i for a, i in calls if i and "sk-very-secret" in i]
    assert secret_inputs == ['VLLM_API_KEY="sk-very-secret"\n']
    assert all("sk-very-secret" not in " ".join(a) for a, _ in calls)
    # daemon-reload ran, then start
    flat = [" ".join(a) for a, _ in calls]
    assert flat.index("systemctl --user daemon-reload") < flat.index(
        "systemctl --user start gpumod-chat.service")


def test_failed_daemon_reload_is_an_error_and_nothing_starts() -> None:
    started = []

    def handler(argv, stdin):
        if "daemon-reload" in argv:
            return 1, "", "Failed to connect to bus"
        if "start" in argv:
            started.append(argv)
        return 0, "/x/gpumod-chat.service\n", ""

    sup = SystemdSupervisor(MockTransport(handler), scope="user")
    with pytest.raises(Exception, match="daemon-reload failed: Failed to connect to bus"):
        sup.start(plan(), {})
    assert not started


def test_system_scope_uses_plain_systemctl_and_failed_start_is_reported() -> None:
    def handler(argv, stdin):
        if argv[:1] == ("systemctl",) and "show" in argv:
            return 0, "LoadState=loaded\nActiveState=failed\nResult=exit-code\nMainPID=0\n", ""
        return 0, "/etc/systemd/system/gpumod-chat.service\n", ""

    mock = MockTransport(handler)
    sup = SystemdSupervisor(mock, scope="system")
    with pytest.raises(Exception, match="did not stay up"):
        sup.start(plan(), {})
    assert not any("--user" in a for a, _ in mock.calls)


def test_env_file_lines_escape_quotes_and_dollars() -> None:
    assert env_file_line("K", 'a"b$c`d\\') == 'K="a\\"b\\$c\\`d\\\\"\n'
    with pytest.raises(UsageError):
        env_file_line("K", "a\nb")


def test_state_mapping() -> None:
    assert state_from_properties({"ActiveState": "active"}).value == "running"
    assert state_from_properties({"ActiveState": "activating",
                                  "SubState": "auto-restart"}).value == "crashed"
    assert state_from_properties({"ActiveState": "failed"}).value == "crashed"
    assert state_from_properties({"ActiveState": "inactive"}).value == "stopped"
