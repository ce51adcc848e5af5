"""The systemd supervisor: one unit per service, installed, started and checked on a host.

Units are rendered by :mod:`gpumod.supervise.units`. Installing is atomic (temp file
in the unit folder, then ``mv``), followed by ``systemctl daemon-reload``; every
systemctl result is checked. ``systemctl --user`` is used where the host runs a user
manager, else system units. Secrets go, through stdin, into the service's 0600
``secrets.env`` (checked: a short write fails the start), which the unit reads with
``EnvironmentFile=``.

A start is prepare (folders, secrets, unit installed; nothing runs) then release
(``systemctl start``), so the lifecycle records the service before its engine runs;
the unit name is the service's identity until systemd gives it a MainPID.

``gpumod watch`` is installed the same way (``install_and_enable``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from gpumod import validate
from gpumod.errors import EngineError, GpumodError, UsageError
from gpumod.hosts.transports.base import CommandResult, Transport
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor
from gpumod.supervise.process import read_log_file
from gpumod.supervise.units import SCOPES, UnitOptions, env_file_line, render_unit, unit_name

# ---------------------------------------------------------------------------- host side

DETECT_SCRIPT = r"""
if command -v systemctl >/dev/null 2>&1; then
  if systemctl --user show-environment >/dev/null 2>&1; then echo user; exit 0; fi
  if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then echo system; exit 0; fi
fi
echo none
"""

# $1 = scope, $2 = unit file name. Reads the unit from stdin; temp file + rename in the
# unit folder so a reader never sees half a unit.
INSTALL_SCRIPT = r"""
set -eu
if [ "$1" = user ]; then dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
else dir=/etc/systemd/system; fi
mkdir -p "$dir"
tmp=$(mktemp "$dir/.gpumod-unit.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$dir/$2"
trap - EXIT
echo "$dir/$2"
"""

REMOVE_SCRIPT = r"""
set -eu
if [ "$1" = user ]; then dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
else dir=/etc/systemd/system; fi
rm -f "$dir/$2"
"""

# $1 = service folder, $2 = file name, $3 = its line count. Secrets from stdin into a
# 0600 file, atomically; a short write (full disk) fails instead of leaving it empty.
SECRETS_SCRIPT = r"""
set -eu
umask 077
mkdir -p "$1"
tmp=$(mktemp "$1/.secrets.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
[ "$(wc -l < "$tmp")" -eq "$3" ] || { echo "cannot write $1/$2 (short write)" >&2; exit 1; }
chmod 0600 "$tmp"
mv -f "$tmp" "$1/$2"
trap - EXIT
"""

# $1 = the log kept from a failed start (dropped now), then the service folder and the
# engine's own empty working folder, made 0700.
FOLDERS_SCRIPT = r"""
set -eu
umask 077
rm -f "$1"; shift
for d in "$@"; do mkdir -p "$d"; chmod 700 "$d"; done
"""

# $1 = service folder, $2 = 1 to keep the log (a failed start) beside the folders.
FORGET_SCRIPT = r"""
dir=$1
if [ "$2" = 1 ] && [ -s "$dir/service.log" ]; then
  failed="$(dirname "$dir")/.failed"
  mkdir -p "$failed" && mv -f "$dir/service.log" "$failed/$(basename "$dir").log"
fi
rm -rf "$dir"
"""

RESOLVE_SCRIPT = 'command -v -- "$1" || { echo "$1: not found on the host" >&2; exit 127; }'


def systemctl_argv(scope: str, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if scope == "user" else []), *args]


def systemctl(transport: Transport, scope: str, *args: str, what: str,
              timeout: float = 120) -> CommandResult:
    """Run systemctl; a non-zero exit raises RemoteCommandError with its stderr."""
    result = transport.run(systemctl_argv(scope, *args), timeout=timeout)
    return result.check(f"{transport.label}: systemctl {what}",
                        hint="`journalctl` on the host says more")


def install_unit_file(transport: Transport, scope: str, unit: str, text: str) -> str:
    """Write a unit atomically into the scope's unit folder, then daemon-reload (checked).

    Returns the unit's path on the host.
    """
    if scope not in SCOPES:
        raise UsageError(f"unknown systemd scope {scope!r}")
    result = transport.run_script(INSTALL_SCRIPT, [scope, unit], input=text, timeout=30)
    result.check(f"{transport.label}: installing {unit}")
    systemctl(transport, scope, "daemon-reload", what="daemon-reload")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def unit_properties(transport: Transport, scope: str, unit: str) -> dict[str, str]:
    result = transport.run(systemctl_argv(
        scope, "show", unit, "--property=LoadState,ActiveState,SubState,MainPID,Result,NRestarts"),
        timeout=30)
    result.check(f"{transport.label}: systemctl show {unit}")
    props: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def install_and_enable(transport: Transport, scope: str, unit: str, text: str) -> str:
    """install_unit_file, then ``enable --now``; raises unless the unit is up afterwards."""
    path = install_unit_file(transport, scope, unit, text)
    systemctl(transport, scope, "enable", "--now", unit, what=f"enable --now {unit}")
    props = unit_properties(transport, scope, unit)
    if props.get("ActiveState") not in {"active", "activating"}:
        raise EngineError(f"{unit} did not stay up (state {props.get('ActiveState')}, "
                          f"result {props.get('Result')})",
                          hint=f"journalctl {'--user ' if scope == 'user' else ''}-u {unit}")
    return path


def detect_scope(transport: Transport) -> str | None:
    """'user' where a user manager answers, 'system' for root on a systemd host, else None."""
    result = transport.run_script(DETECT_SCRIPT, timeout=20)
    answer = result.stdout.strip().splitlines()[-1:] if result.ok else []
    return answer[0] if answer and answer[0] in SCOPES else None


class SystemdSupervisor(Supervisor):
    """Runs one service as ``gpumod-NAME.service`` under systemd on a host."""

    name = "systemd"

    def __init__(self, transport: Transport, *, scope: str = "user",
                 options: UnitOptions | None = None) -> None:
        if scope not in SCOPES:
            raise UsageError(f"unknown systemd scope {scope!r}")
        self.transport = transport
        self.scope = scope
        base = options or UnitOptions()
        self.options = UnitOptions(**{**base.__dict__, "scope": scope})

    # -- systemctl ---------------------------------------------------------
    def systemctl_argv(self, *args: str) -> list[str]:
        return systemctl_argv(self.scope, *args)

    def systemctl(self, *args: str, what: str, timeout: float = 120) -> CommandResult:
        return systemctl(self.transport, self.scope, *args, what=what, timeout=timeout)

    def properties(self, unit: str) -> dict[str, str]:
        return unit_properties(self.transport, self.scope, unit)

    # -- the unit -------------------------------------------------------------
    def resolve_command(self, plan: LaunchPlan) -> LaunchPlan:
        """argv[0] as an absolute path on the host (systemd wants one)."""
        exe = plan.argv[0]
        if exe.startswith("/"):
            return plan
        result = self.transport.run_script(RESOLVE_SCRIPT, [exe], timeout=20)
        path = result.stdout.strip().splitlines()[-1] if result.ok and result.stdout.strip() else ""
        if not path.startswith("/"):
            raise EngineError(f"{self.transport.label}: {exe} is not installed on the host",
                              hint="install the engine there, or fix the service's command")
        from dataclasses import replace

        return replace(plan, argv=(path, *plan.argv[1:]))

    def render(self, plan: LaunchPlan) -> str:
        return render_unit(plan, self.options)

    def install(self, plan: LaunchPlan, secrets: Mapping[str, str] | None = None) -> str:
        """Write secrets and the unit atomically, then daemon-reload. Returns the unit path."""
        plan = self.resolve_command(plan)
        validate.no_secret_in([plan.argv, plan.env], (secrets or {}).values(),
                              "service's unit (argv or environment)")
        text = self.render(plan)
        body = "".join(env_file_line(k, v) for k, v in sorted((secrets or {}).items()))
        self.transport.run_script(
            SECRETS_SCRIPT, [plan.service_dir, posixpath.basename(plan.env_file),
                             str(body.count("\n"))],
            input=body, timeout=30).check(f"{self.transport.label}: writing the env file")
        return install_unit_file(self.transport, self.scope, unit_name(plan.service), text)

    def uninstall(self, plan: LaunchPlan) -> None:
        unit = unit_name(plan.service)
        self.transport.run_script(REMOVE_SCRIPT, [self.scope, unit], timeout=30).check(
            f"{self.transport.label}: removing {unit}")
        self.systemctl("daemon-reload", what="daemon-reload")

    # -- Supervisor -----------------------------------------------------------
    def prepare(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        folders = [plan.service_dir] + ([] if plan.workdir else [plan.run_dir])
        self.transport.run_script(FOLDERS_SCRIPT, [plan.kept_log_path, *folders],
                                  timeout=30).check(
            f"{self.transport.label}: creating {plan.service_dir}")
        self.install(plan, secrets)
        # A unit that hit its restart limit stays failed until reset; ignore "not loaded".
        self.transport.run(self.systemctl_argv("reset-failed", unit_name(plan.service)),
                           timeout=30)
        return None

    def release(self, plan: LaunchPlan, held: int | None) -> int | None:
        unit = unit_name(plan.service)
        self.systemctl("start", unit, what=f"start {unit}")
        props = self.properties(unit)
        if props.get("ActiveState") not in {"active", "activating"}:
            raise EngineError(f"{unit} did not stay up (state {props.get('ActiveState')}, "
                              f"result {props.get('Result')})",
                              hint=f"see the log: {plan.log_path}")
        return _main_pid(props)

    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> str:
        unit = unit_name(plan.service)
        props = self.properties(unit)
        if props.get("LoadState") == "not-found":
            return "not-running"
        was = state_from_properties(props)
        self.systemctl("stop", unit, what=f"stop {unit}", timeout=timeout + 60)
        after = self.properties(unit)
        if after.get("ActiveState") in {"active", "activating", "deactivating"}:
            raise EngineError(f"{unit} is still {after.get('ActiveState')} after stop")
        self.transport.run(["rm", "-f", "--", plan.env_file], timeout=30)
        return "stopped" if was == ProcessState.RUNNING else "not-running"

    def remove(self, plan: LaunchPlan, *, timeout: float = 20, keep_log: bool = False) -> str:
        outcome = self.stop(plan, timeout=timeout)
        self.uninstall(plan)
        self.transport.run_script(FORGET_SCRIPT, [plan.service_dir, "1" if keep_log else "0"],
                                  timeout=30).check(
            f"{self.transport.label}: removing {plan.service_dir}")
        return outcome

    def state(self, plan: LaunchPlan) -> ProcessState:
        try:
            props = self.properties(unit_name(plan.service))
        except GpumodError:
            return ProcessState.UNKNOWN
        return state_from_properties(props)

    def pid(self, plan: LaunchPlan) -> int | None:
        return _main_pid(self.properties(unit_name(plan.service)))

    def status_source(self, plan: LaunchPlan) -> tuple[str, str] | None:
        return (self.scope, unit_name(plan.service))

    def read_log(self, plan: LaunchPlan, lines: int = 200) -> str:
        return read_log_file(self.transport, plan.log_path, lines)


def _main_pid(props: Mapping[str, str]) -> int | None:
    pid = props.get("MainPID", "0")
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


def state_from_properties(props: Mapping[str, str]) -> ProcessState:
    active, sub = props.get("ActiveState", ""), props.get("SubState", "")
    if sub == "auto-restart" or active == "failed":
        return ProcessState.CRASHED
    if active in {"active", "activating", "deactivating", "reloading"}:
        return ProcessState.RUNNING
    if active == "inactive":
        return ProcessState.STOPPED
    return ProcessState.UNKNOWN
