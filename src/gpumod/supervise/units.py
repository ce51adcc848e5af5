"""systemd unit files, rendered (pure: nothing here touches a host).

Units come from a Jinja2 template per engine (``templates/<engine>.service.j2``),
rendered in a ``SandboxedEnvironment``. Every value reaches the unit through one of
the ``sd_*`` filters below, which validate and escape it for the place it lands
(ExecStart= argument, Environment= assignment, path, plain text); the renderer's
``finalize`` hook refuses any value that skipped them, so no value, whatever it
holds, can end a line and start a new directive.

Secrets never enter the unit: they go, through stdin, into the service's 0600
``secrets.env``, which the unit reads with ``EnvironmentFile=``.

``gpumod watch`` gets a unit of its own (``gpumod-watch@POD.service``, template
``watch.service.j2``), rendered by the same sandbox (``render_watch_unit``).
Installing and running units is :mod:`gpumod.supervise.systemd`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from gpumod import validate
from gpumod.errors import UsageError
from gpumod.supervise.base import LaunchPlan

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
        "workdir": plan.run_dir,
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
