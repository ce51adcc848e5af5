"""`gpumod watch --print-unit/--install-unit`: the watcher's own systemd unit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gpumod.errors import ConfigError, EngineError, RemoteCommandError, UsageError
from gpumod.hosts.transports.mock import MockTransport
from gpumod.ops.watch import Policy, install_watch_unit, policy_flags, watch_unit
from gpumod.supervise.units import render_watch_unit, watch_unit_name
from tests.support.cli import run_cli

EXE = "/opt/gpumod/bin/gpumod"


def test_policy_flags_spell_out_every_choice() -> None:
    assert policy_flags(Policy()) == ["--interval", "10", "--fail-threshold", "3",
                                      "--max-restarts", "3", "--restart-window", "600",
                                      "--idle-ttl", "600"]
    flags = policy_flags(Policy(interval=0.5, restart=False, idle_sleep=False))
    assert flags[1] == "0.5" and flags[-2:] == ["--no-restart", "--no-idle-sleep"]
    with pytest.raises(UsageError, match="finite"):
        policy_flags(Policy(interval=float("inf")))


def test_unit_runs_watch_with_home_and_restart() -> None:
    unit, text = watch_unit("gpu1", Policy(max_restarts=5), scope="user", home="/srv/gh",
                            executable=EXE, path_env="/usr/bin")
    assert unit == "gpumod-watch@gpu1.service"
    lines = text.splitlines()
    assert ('ExecStart="/opt/gpumod/bin/gpumod" "watch" "--pod" "gpu1" "--interval" "10" '
            '"--fail-threshold" "3" "--max-restarts" "5" "--restart-window" "600" '
            '"--idle-ttl" "600"') in lines
    assert 'Environment="GPUMOD_HOME=/srv/gh"' in lines
    assert 'Environment="PATH=/usr/bin"' in lines
    assert "Restart=on-failure" in lines and "WantedBy=default.target" in lines
    _, system = watch_unit("gpu1", Policy(), scope="system", home="/srv/gh", executable=EXE)
    assert "WantedBy=multi-user.target" in system.splitlines()


def test_watch_unit_name_cannot_clash_with_a_service_unit() -> None:
    assert watch_unit_name("local") == "gpumod-watch@local.service"
    with pytest.raises(UsageError):
        watch_unit_name("a@b")


@pytest.mark.parametrize("kw", [
    {"home": "/srv/x\nExecStartPre=/bin/rm -rf /"},
    {"path_env": "/usr/bin\nUser=root"},
    {"executable": "/opt/gpumod/bin/gpumod\nExecStartPre=/bin/true"},
    {"executable": "gpumod"},
    {"executable": "/opt/with space/gpumod"},
])
def test_injection_attempts_are_refused(kw) -> None:
    args = {"scope": "user", "home": "/srv/gh", "executable": EXE, "path_env": "/usr/bin"}
    args.update(kw)
    with pytest.raises(UsageError):
        watch_unit("local", Policy(), **args)


@pytest.mark.parametrize("pod", ["local\nUser=root", "../etc", "a b", ""])
def test_bad_pod_names_are_refused(pod: str) -> None:
    with pytest.raises(UsageError):
        render_watch_unit([EXE, "watch"], pod=pod, home="/srv/gh")


def test_argument_with_newline_or_semicolon_is_refused() -> None:
    with pytest.raises(UsageError):
        render_watch_unit([EXE, "watch", "--pod", "x\nExecStartPre=/bin/true"], pod="x",
                          home="/srv/gh")
    with pytest.raises(UsageError):
        render_watch_unit([EXE, "watch", ";", "/bin/rm"], pod="x", home="/srv/gh")
    with pytest.raises(UsageError):
        render_watch_unit([EXE, "watch"], pod="x", home="/srv/gh", env={"A\nB": "1"})
    with pytest.raises(UsageError, match="absolute"):
        render_watch_unit([EXE, "watch"], pod="x", home="relative/home")


# ---------------------------------------------------------------------------- installing


class Systemctl:
    """A MockTransport handler playing a host with a user manager; failures on demand."""

    def __init__(self, fail: str = "", state: str = "active") -> None:
        self.fail, self.state = fail, state

    def __call__(self, argv, stdin):
        if argv[:2] == ("sh", "-c") and "mktemp" in argv[2]:
            if self.fail == "write":
                return 1, "", "mkdir: cannot create directory: Permission denied"
            return 0, f"/home/u/.config/systemd/user/{argv[-1]}\n", ""
        if argv[:2] == ("sh", "-c") and "show-environment" in argv[2]:
            return 0, "user\n", ""
        if argv[0] == "systemctl":
            verb = argv[2] if argv[1] == "--user" else argv[1]
            if verb == self.fail:
                return 1, "", f"Failed to {verb}: Access denied"
            if verb == "show":
                return 0, f"LoadState=loaded\nActiveState={self.state}\nResult=success\n", ""
            return 0, "", ""
        return 127, "", f"unexpected {argv}"


def flat(mock: MockTransport) -> list[str]:
    return [" ".join(a) if a[0] != "sh" else f"sh:{a[-2]}:{a[-1]}" for a, _ in mock.calls]


def test_install_writes_atomically_reloads_enables_and_checks() -> None:
    mock = MockTransport(Systemctl())
    unit, path, scope = install_watch_unit("local", Policy(), transport=mock, home="/srv/gh",
                                           executable=EXE, path_env="/usr/bin")
    assert (unit, scope) == ("gpumod-watch@local.service", "user")
    assert path == "/home/u/.config/systemd/user/gpumod-watch@local.service"
    calls = flat(mock)
    assert calls[1:] == [
        "sh:user:gpumod-watch@local.service",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now gpumod-watch@local.service",
        "systemctl --user show gpumod-watch@local.service "
        "--property=LoadState,ActiveState,SubState,MainPID,Result,NRestarts",
    ]
    written = mock.calls[1][1]
    assert written.startswith("# Installed by `gpumod watch --install-unit`")
    assert "[Service]" in written and "Restart=on-failure" in written


def test_system_scope_uses_plain_systemctl() -> None:
    mock = MockTransport(Systemctl())
    install_watch_unit("local", Policy(), scope="system", transport=mock, home="/srv/gh",
                       executable=EXE)
    calls = flat(mock)
    assert calls[0] == "sh:system:gpumod-watch@local.service"   # no detection: scope given
    assert "systemctl enable --now gpumod-watch@local.service" in calls
    assert not any("--user" in c for c in calls)


@pytest.mark.parametrize("fail,after", [
    ("write", None), ("daemon-reload", "enable"), ("enable", "show"),
])
def test_every_systemctl_failure_stops_the_install(fail: str, after: str | None) -> None:
    mock = MockTransport(Systemctl(fail=fail))
    with pytest.raises(RemoteCommandError) as info:
        install_watch_unit("local", Policy(), scope="user", transport=mock, home="/srv/gh",
                           executable=EXE)
    assert ("Permission denied" if fail == "write" else "Access denied") in str(info.value)
    calls = flat(mock)
    if fail == "write":
        assert not any(c.startswith("systemctl") for c in calls)
    else:
        assert not any(f" {after} " in c + " " for c in calls)


def test_unit_that_does_not_stay_up_is_an_error() -> None:
    mock = MockTransport(Systemctl(state="failed"))
    with pytest.raises(EngineError, match="did not stay up") as info:
        install_watch_unit("local", Policy(), scope="user", transport=mock, home="/srv/gh",
                           executable=EXE)
    assert "journalctl --user -u gpumod-watch@local.service" in (info.value.hint or "")


def test_no_systemd_manager_is_a_config_error() -> None:
    mock = MockTransport(lambda argv, stdin: (0, "none\n", ""))
    with pytest.raises(ConfigError, match="no systemd manager"):
        install_watch_unit("local", Policy(), transport=mock, home="/srv/gh", executable=EXE)
    assert len(mock.calls) == 1


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMOD_HOME", str(tmp_path / "home"))
    exe = Path(sys.executable).parent / "gpumod"
    monkeypatch.setattr(sys, "argv", [str(exe)])
    yield tmp_path / "home", exe.resolve()
    from gpumod.store import db as dbmod

    for st in list(dbmod._open.values()):
        st.close()
    dbmod._open.clear()


def test_print_unit(home) -> None:
    home_dir, exe = home
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe}: the venv's gpumod script is missing (pip install -e .)")
    code, out, err = run_cli("watch", "--print-unit", "--idle-ttl", "120", "--no-restart",
                             prog=str(Path(sys.argv[0])))  # the installed script
    assert code == 0, err
    assert f'Environment="GPUMOD_HOME={home_dir}"' in out
    assert (f'ExecStart="{exe}" "watch" "--pod" "local" "--interval" "10" '
            '"--fail-threshold" "3" "--max-restarts" "3" "--restart-window" "600" '
            '"--idle-ttl" "120" "--no-restart"') in out


@pytest.mark.parametrize("argv,message", [
    (["--print-unit", "--once"], "cannot go into the watcher's unit"),
    (["--install-unit", "--iterations", "2"], "cannot go into the watcher's unit"),
    (["--scope", "user"], "--scope goes with"),
    (["--print-unit", "--install-unit"], "not both"),
    (["--print-unit", "--interval", "nan"], "finite"),
    (["--print-unit", "--idle-ttl", "inf"], "finite"),
    (["--print-unit", "--pod", "local\nExecStartPre=/bin/true"], "pod"),
])
def test_cli_bad_input(home, argv, message) -> None:
    code, out, err = run_cli("watch", *argv)
    assert code != 0 and message in err, (code, out, err)
    assert "[Service]" not in out
