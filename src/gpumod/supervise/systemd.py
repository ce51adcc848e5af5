"""The systemd supervisor: one unit per service, rendered, installed and checked.

Units come from a Jinja2 template per engine (``templates/<engine>.service.j2``),
rendered in a ``SandboxedEnvironment``. Every value reaches the unit through one of
the ``sd_*`` filters below, which validate and escape it for the place it lands
(ExecStart= argument, Environment= assignment, path, plain text); the renderer's
``finalize`` hook refuses any value that skipped them, so no value, whatever it
holds, can end a line and start a new directive.

Secrets never enter the unit: they go, through stdin, into the service's 0600
``secrets.env``, which the unit reads with ``EnvironmentFile=``.

Installing is atomic (temp file in the unit folder, then ``mv``), followed by
``systemctl daemon-reload``; every systemctl result is checked. ``systemctl
--user`` is used where the host runs a user manager, else system units.

``gpumod watch`` gets a unit of its own (``gpumod-watch@POD.service``, template
``watch.service.j2``), rendered by the same sandbox and installed the same way,
then ``systemctl enable --now`` (see ``render_watch_unit``/``install_and_enable``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from gpumod import validate
from gpumod.errors import EngineError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor

UNIT_PREFIX = "gpumod-"
ENGINE_TEMPLATES = ("vllm", "llamacpp", "command", "docker")
SCOPES = ("user", "system")

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters a bare (unquoted) path value may hold in a unit: no whitespace, no quotes,
# no backslash; '%' is escaped as '%%'.
_PATH_OK = re.compile(r"/[A-Za-z0-9._/+,:@%=~-]*")


def unit_name(service: str) -> str:
    return f"{UNIT_PREFIX}{validate.name(service, 'service name')}.service"


# ---------------------------------------------------------------------------- escaping


class UnitValue(str):
    """A string already validated and escaped for a unit file (the only kind rendered)."""


def _no_control(value: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"{what} contains a newline or control character: {value[:40]!r}",
                         hint="systemd units are line based; remove the control character")
    return value


def escape_specifiers(value: str) -> str:
    return value.replace("%", "%%")


def sd_text(value: Any, what: str = "unit text") -> UnitValue:
    """Free text (Description=, comments): one line, specifiers escaped."""
    text = _no_control(str(value), what)
    return UnitValue(escape_specifiers(text))


def sd_int(value: Any) -> UnitValue:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"expected an integer in the unit, got {value!r}")
    return UnitValue(str(value))


def sd_path(value: Any, what: str = "path") -> UnitValue:
    """An absolute path written bare (WorkingDirectory=, EnvironmentFile=, append:)."""
    text = _no_control(str(value), what)
    if not _PATH_OK.fullmatch(text) or "/../" in text + "/":
        raise UsageError(f"{what} {text!r} cannot be written into a systemd unit",
                         hint="use an absolute path without spaces, quotes or backslashes")
    return UnitValue(escape_specifiers(text))


def _quote(word: str) -> str:
    # systemd's unquoting (EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) undoes \\ and \" inside
    # double quotes; '%' specifiers are expanded everywhere.
    return '"' + escape_specifiers(word.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def quote_exec_arg(word: str, what: str = "command argument") -> str:
    """One ExecStart= word: double-quoted, '$' doubled (no variable expansion)."""
    _no_control(word, what)
    if word == ";":
        raise UsageError("a lone ';' argument cannot be put in a systemd unit "
                         "(systemd reads it as a command separator)",
                         hint="use --supervisor process for this service")
    return _quote(word).replace("$", "$$")


def sd_exec(argv: Sequence[str]) -> UnitValue:
    """A whole command line for ExecStart=; argv[0] must be an absolute path."""
    words = [str(w) for w in argv]
    if not words:
        raise UsageError("empty command for the unit")
    if not words[0].startswith("/"):
        raise UsageError(f"the unit's command {words[0]!r} is not an absolute path",
                         hint="gpumod resolves it on the host first; is it installed there?")
    sd_path(words[0], "command path")
    return UnitValue(" ".join(quote_exec_arg(w) for w in words))


def env_pair(key: str, value: Any) -> UnitValue:
    """One Environment= assignment: key checked, value quoted (no '$' expansion there)."""
    if not _ENV_KEY.fullmatch(str(key)):
        raise UsageError(f"invalid environment variable name {key!r}",
                         hint="use letters, digits and '_', not starting with a digit")
    text = _no_control(str(value), f"environment value of {key}")
    return UnitValue(_quote(f"{key}={text}"))


def env_file_line(key: str, value: str) -> str:
    """One KEY="value" line for an EnvironmentFile= (double quotes, \\ " $ ` escaped)."""
    if not _ENV_KEY.fullmatch(key):
        raise UsageError(f"invalid environment variable name {key!r}")
    _no_control(value, f"value of {key}")
    escaped = re.sub(r'([\\"$`])', r"\\\1", value)
    return f'{key}="{escaped}"\n'


def _finalize(value: Any) -> Any:
    if value is None or value == "":
        return ""
    if isinstance(value, UnitValue):
        return value
    raise UsageError(f"internal: a unit template printed an unescaped value {str(value)[:40]!r}")


# ---------------------------------------------------------------------------- rendering


class _PackageLoader(BaseLoader):
    def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
        if "/" in template or template.startswith("."):
            raise TemplateNotFound(template)
        ref = resources.files("gpumod.supervise").joinpath("templates", template)
        if not ref.is_file():
            raise TemplateNotFound(template)
        return ref.read_text(encoding="utf-8"), template, lambda: True


_ENV: SandboxedEnvironment | None = None


def _environment() -> SandboxedEnvironment:
    global _ENV
    if _ENV is None:
        env = SandboxedEnvironment(loader=_PackageLoader(), undefined=StrictUndefined,
                                   autoescape=False, finalize=_finalize,
                                   keep_trailing_newline=True, trim_blocks=False)
        env.filters.update(sd_text=sd_text, sd_int=sd_int, sd_path=sd_path, sd_exec=sd_exec)
        env.globals["env_pair"] = env_pair
        _ENV = env
    return _ENV


@dataclass(frozen=True)
class UnitOptions:
    engine: str = "command"
    scope: str = "user"
    description: str | None = None
    stop_timeout: int = 30
    restart_sec: int = 10
    docker_binary: str = "/usr/bin/docker"
    container_name: str | None = None


def render_unit(plan: LaunchPlan, options: UnitOptions | None = None) -> str:
    """The unit text for a launch plan (pure: nothing touches a host)."""
    options = options or UnitOptions()
    if options.engine not in ENGINE_TEMPLATES:
        raise UsageError(f"no unit template for engine {options.engine!r}",
                         hint=f"known: {', '.join(ENGINE_TEMPLATES)}")
    if options.scope not in SCOPES:
        raise UsageError(f"unknown systemd scope {options.scope!r}")
    if not plan.service_dir.startswith("/"):
        raise UsageError("the service folder must be an absolute path for a unit")
    context: dict[str, Any] = {
        "name": validate.name(plan.service, "service name"),
        "description": options.description or f"gpumod service {plan.service}",
        "argv": list(plan.argv),
        "env": sorted(plan.env.items()),
        "env_file": plan.env_file,
        "log_path": plan.log_path,
        "workdir": plan.workdir or plan.service_dir,
        "restart": plan.restart_on_failure,
        "restart_sec": options.restart_sec,
        "stop_timeout": options.stop_timeout,
        "start_limit_interval": 600,
        "start_limit_burst": 5,
        "wanted_by": "default.target" if options.scope == "user" else "multi-user.target",
        "system_scope": options.scope == "system",
    }
    if options.engine == "docker":
        container = options.container_name or f"{UNIT_PREFIX}{plan.service}"
        context["docker_rm"] = [options.docker_binary, "rm", "-f", container]
        context["docker_stop"] = [options.docker_binary, "stop", "-t",
                                  str(options.stop_timeout), container]
    try:
        return _environment().get_template(f"{options.engine}.service.j2").render(context)
    except UsageError:
        raise
    except Exception as exc:  # jinja errors: a broken or tampered template
        raise UsageError(f"cannot render the {options.engine} unit: {exc}") from exc


WATCH_UNIT_PREFIX = f"{UNIT_PREFIX}watch@"


def watch_unit_name(pod: str) -> str:
    """``gpumod-watch@POD.service``: '@' is never part of a service name, so no clash."""
    return f"{WATCH_UNIT_PREFIX}{validate.name(pod, 'pod name')}.service"


def render_watch_unit(argv: Sequence[str], *, pod: str, home: str, scope: str = "user",
                      env: Mapping[str, str] | None = None, restart_sec: int = 10,
                      stop_timeout: int = 30) -> str:
    """The unit that runs ``gpumod watch`` (argv[0]: the absolute gpumod executable).

    ``GPUMOD_HOME`` is set to ``home`` (absolute) so the watcher reads the same store;
    ``env`` adds more assignments (checked and quoted like every engine unit's).
    """
    if scope not in SCOPES:
        raise UsageError(f"unknown systemd scope {scope!r}", hint="use user or system")
    home_text = _no_control(str(home), "GPUMOD_HOME")
    if not home_text.startswith("/"):
        raise UsageError(f"GPUMOD_HOME {home_text!r} is not an absolute path")
    pairs = dict(env or {})
    pairs["GPUMOD_HOME"] = home_text
    pairs.setdefault("PYTHONUNBUFFERED", "1")   # every logged action reaches the journal now
    context: dict[str, Any] = {
        "pod": validate.name(pod, "pod name"),
        "description": f"gpumod watch of pod {pod}",
        "argv": [str(a) for a in argv],
        "env": sorted(pairs.items()),
        "restart_sec": restart_sec,
        "stop_timeout": stop_timeout,
        "start_limit_interval": 600,
        "start_limit_burst": 5,
        "wanted_by": "default.target" if scope == "user" else "multi-user.target",
    }
    try:
        return _environment().get_template("watch.service.j2").render(context)
    except UsageError:
        raise
    except Exception as exc:  # jinja errors: a broken or tampered template
        raise UsageError(f"cannot render the watch unit: {exc}") from exc


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

# $1 = service folder, $2 = file name. Secrets from stdin into a 0600 file, atomically.
SECRETS_SCRIPT = r"""
set -eu
umask 077
mkdir -p "$1"
tmp=$(mktemp "$1/.secrets.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chmod 0600 "$tmp"
mv -f "$tmp" "$1/$2"
trap - EXIT
"""

RESOLVE_SCRIPT = 'command -v -- "$1" || { echo "$1: not found on the host" >&2; exit 127; }'


def systemctl_argv(scope: str, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if scope == "user" else []), *args]


def systemctl(transport: Transport, scope: str, *args: str, what: str, timeout: float = 120):
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

    def systemctl(self, *args: str, what: str, timeout: float = 120):
        return systemctl(self.transport, self.scope, *args, what=what, timeout=timeout)

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
        if secrets:
            body = "".join(env_file_line(k, v) for k, v in sorted(secrets.items()))
            self.transport.run_script(
                SECRETS_SCRIPT, [plan.service_dir, posixpath.basename(plan.env_file)],
                input=body, timeout=30).check(f"{self.transport.label}: writing the env file")
        return install_unit_file(self.transport, self.scope, unit_name(plan.service), text)

    def uninstall(self, plan: LaunchPlan) -> None:
        unit = unit_name(plan.service)
        self.stop(plan)
        self.transport.run_script(REMOVE_SCRIPT, [self.scope, unit], timeout=30).check(
            f"{self.transport.label}: removing {unit}")
        self.systemctl("daemon-reload", what="daemon-reload")

    # -- Supervisor -----------------------------------------------------------
    def start(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        unit = unit_name(plan.service)
        mkdir = self.transport.run(["mkdir", "-p", plan.service_dir], timeout=30)
        mkdir.check(f"{self.transport.label}: creating {plan.service_dir}")
        self.install(plan, secrets)
        # A unit that hit its restart limit stays failed until reset; ignore "not loaded".
        self.transport.run(self.systemctl_argv("reset-failed", unit), timeout=30)
        self.systemctl("start", unit, what=f"start {unit}")
        props = self.properties(unit)
        if props.get("ActiveState") not in {"active", "activating"}:
            raise EngineError(f"{unit} did not stay up (state {props.get('ActiveState')}, "
                              f"result {props.get('Result')})",
                              hint=f"see the log: {plan.log_path}")
        pid = props.get("MainPID", "0")
        return int(pid) if pid.isdigit() and int(pid) > 0 else None

    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> None:
        unit = unit_name(plan.service)
        props = self.properties(unit)
        if props.get("LoadState") == "not-found":
            return
        self.systemctl("stop", unit, what=f"stop {unit}", timeout=timeout + 60)
        after = self.properties(unit)
        if after.get("ActiveState") in {"active", "activating", "deactivating"}:
            raise EngineError(f"{unit} is still {after.get('ActiveState')} after stop")

    def state(self, plan: LaunchPlan) -> ProcessState:
        try:
            props = self.properties(unit_name(plan.service))
        except Exception:
            return ProcessState.UNKNOWN
        return state_from_properties(props)

    def properties(self, unit: str) -> dict[str, str]:
        return unit_properties(self.transport, self.scope, unit)


def state_from_properties(props: Mapping[str, str]) -> ProcessState:
    active, sub = props.get("ActiveState", ""), props.get("SubState", "")
    if sub == "auto-restart" or active == "failed":
        return ProcessState.CRASHED
    if active in {"active", "activating", "deactivating", "reloading"}:
        return ProcessState.RUNNING
    if active == "inactive":
        return ProcessState.STOPPED
    return ProcessState.UNKNOWN
