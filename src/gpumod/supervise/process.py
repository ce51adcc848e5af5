"""The process supervisor: setsid, own process group, pid file, log file, manifest.

Everything on the host happens through fixed shell scripts shipped here, run
with their inputs as positional parameters (never interpolated), so a
service name, model id or argument can never become shell code.

Start (one round trip): the service folder ``<root>/services/NAME/`` is made
0700; stdin carries three sections, the non-secret environment, the secrets
and the manifest, which land in ``service.env``, ``secrets.env`` (0600) and
``manifest.json``; then the launcher runs
``setsid sh -c '. service.env; . secrets.env; echo $$ > service.pid; exec ARGV'``
in the background with its output in ``service.log``. The engine therefore
is the leader of its own session and process group, its pid is the group id,
its argv holds no secret (``ps`` shows only the engine's argv) and its
environment is readable only by its owner.

Stop: TERM to every process of the group and session, KILL after the
timeout, and an error if anything survives. The pid file holds the pid, and
``service.pidstart`` the kernel start time, so a recycled pid is never taken
for the service.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from gpumod import validate
from gpumod.errors import EngineError, RemoteCommandError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor

ENV_MARK = "%%gpumod-env%%"
SECRETS_MARK = "%%gpumod-secrets%%"
MANIFEST_MARK = "%%gpumod-manifest%%"

# Shared shell functions: is a pid (still) our process; does a group/session live on.
SH_FUNCTIONS = r"""
starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
pid_alive() {
  # $1 pid, $2 expected start time (may be empty). Zombies count as dead.
  [ -n "$1" ] || return 1
  kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/stat" ]; then
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$st" = Z ] && return 1
    if [ -n "$2" ]; then [ "$(starttime "$1")" = "$2" ] || return 1; fi
  fi
  return 0
}
members() {
  # live (non-zombie) pids whose process group or session is $1
  if [ -d /proc/self ]; then
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '{
      pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ");
      if (f[1] != "Z" && (f[3] == g || f[4] == g)) print pid }'
  elif kill -0 -- "-$1" 2>/dev/null; then echo "$1"; fi
}
"""

START_SCRIPT = SH_FUNCTIONS + r"""
set -u
dir=$1; workdir=$2; shift 2
umask 077
mkdir -p "$dir" || exit 20
chmod 700 "$dir"
old=$(cat "$dir/service.pid" 2>/dev/null || true)
if [ -n "$old" ] && pid_alive "$old" "$(cat "$dir/service.pidstart" 2>/dev/null)"; then
  echo "a process of this service is already running (pid $(cat "$dir/service.pid"))" >&2
  exit 21
fi
rm -f "$dir/service.pid" "$dir/service.pidstart" "$dir/stopped"
: > "$dir/service.env.tmp"; : > "$dir/secrets.env.tmp"; : > "$dir/manifest.json.tmp"
target=/dev/null
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    '%%gpumod-env%%') target="$dir/service.env.tmp"; continue ;;
    '%%gpumod-secrets%%') target="$dir/secrets.env.tmp"; continue ;;
    '%%gpumod-manifest%%') target="$dir/manifest.json.tmp"; continue ;;
  esac
  printf '%s\n' "$line" >> "$target"
done
mv "$dir/service.env.tmp" "$dir/service.env"
mv "$dir/secrets.env.tmp" "$dir/secrets.env"
mv "$dir/manifest.json.tmp" "$dir/manifest.json"
command -v setsid >/dev/null 2>&1 || { echo "setsid: not found (install util-linux)" >&2; exit 22; }
[ -d "$workdir" ] || workdir=$dir
: > "$dir/service.log"
cd "$workdir" || exit 23
nohup setsid sh -c '
  set -a; . "$1"; . "$2"; set +a
  echo $$ > "$3.tmp" && mv "$3.tmp" "$3"
  shift 3
  exec "$@"' gpumod-launch "$dir/service.env" "$dir/secrets.env" "$dir/service.pid" "$@" \
  >> "$dir/service.log" 2>&1 < /dev/null &
i=0
while [ ! -s "$dir/service.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
[ -s "$dir/service.pid" ] || { echo "the launcher did not start" >&2; exit 24; }
pid=$(cat "$dir/service.pid")
starttime "$pid" > "$dir/service.pidstart" 2>/dev/null || true
echo "$pid"
"""

STOP_SCRIPT = SH_FUNCTIONS + r"""
set -u
dir=$1; timeout=$2; forget=$3
pid=$(cat "$dir/service.pid" 2>/dev/null || true)
start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
result=not-running
if [ -n "$pid" ] && pid_alive "$pid" "$start"; then
  result=stopped
  for p in $(members "$pid"); do kill -TERM "$p" 2>/dev/null; done
  kill -TERM -- "-$pid" 2>/dev/null
  ticks=$(( timeout * 10 )); i=0
  while [ -n "$(members "$pid")" ] && [ $i -lt $ticks ]; do sleep 0.1; i=$((i+1)); done
  if [ -n "$(members "$pid")" ]; then
    result=killed
    kill -KILL -- "-$pid" 2>/dev/null
    for p in $(members "$pid"); do kill -KILL "$p" 2>/dev/null; done
    i=0
    while [ -n "$(members "$pid")" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  fi
  left=$(members "$pid")
  if [ -n "$left" ]; then echo "processes survived KILL: $left" >&2; exit 3; fi
fi
rm -f "$dir/service.pid" "$dir/service.pidstart" "$dir/secrets.env"
if [ "$forget" = 1 ]; then rm -rf "$dir"; elif [ -d "$dir" ]; then : > "$dir/stopped"; fi
echo "$result"
"""

STATE_SCRIPT = SH_FUNCTIONS + r"""
dir=$1
pid=$(cat "$dir/service.pid" 2>/dev/null || true)
start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
if [ -z "$pid" ]; then
  if [ -f "$dir/manifest.json" ] && [ ! -f "$dir/stopped" ]; then echo crashed
  else echo stopped; fi
elif pid_alive "$pid" "$start"; then echo running
else echo crashed
fi
"""

TAIL_SCRIPT = r"""
log=$1; lines=$2; follow=$3
[ -e "$log" ] || { echo "no log at $log" >&2; exit 3; }
if [ "$follow" = 1 ]; then exec tail -n "$lines" -F "$log"; fi
exec tail -n "$lines" "$log"
"""


def env_file_body(values: Mapping[str, str]) -> str:
    """KEY='value' lines, readable by `sh` (set -a; .) and by systemd's EnvironmentFile=."""
    lines = []
    for key, value in sorted(values.items()):
        if not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise UsageError(f"invalid environment variable name {key!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
            raise UsageError(f"the value of {key} contains a newline or control character")
        lines.append(f"{key}={shlex.quote(str(value))}\n")
    return "".join(lines)


class ProcessSupervisor(Supervisor):
    name = "process"

    def __init__(self, transport: Transport, *, manifest: Mapping | None = None) -> None:
        self.transport = transport
        self.manifest = dict(manifest or {})

    def start(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        if not plan.service_dir or not plan.argv:
            raise UsageError("a launch plan needs a service folder and an argv")
        manifest = {**self.manifest, "service": plan.service, "argv": list(plan.argv),
                    "env": dict(plan.env), "supervisor": self.name,
                    "log": plan.log_path, "pid_file": plan.pid_path}
        # the manifest and argv are not secret stores (raw values: a key may hold '"')
        validate.no_secret_in([manifest], secrets.values(), "service's argv or environment")
        stdin = (f"{ENV_MARK}\n{env_file_body(plan.env)}{SECRETS_MARK}\n"
                 f"{env_file_body(secrets)}{MANIFEST_MARK}\n"
                 f"{json.dumps(manifest, sort_keys=True)}\n")
        result = self.transport.run_script(
            START_SCRIPT, [plan.service_dir, plan.workdir or plan.service_dir, *plan.argv],
            input=stdin, timeout=60)
        if not result.ok:
            detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
            raise EngineError(f"{self.transport.label}: could not launch {plan.service}: "
                              f"{detail[0]}")
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EngineError(f"{self.transport.label}: the launcher printed no pid "
                              f"for {plan.service}") from None

    def stop(self, plan: LaunchPlan, *, timeout: float = 20, forget: bool = False) -> str:
        """TERM the group, KILL after `timeout`; 'stopped', 'killed' or 'not-running'.

        With ``forget`` the service folder (manifest, log) goes too.
        """
        result = self.transport.run_script(
            STOP_SCRIPT, [plan.service_dir, str(max(1, int(timeout))), "1" if forget else "0"],
            timeout=timeout + 30)
        if result.returncode == 3:
            raise EngineError(f"{self.transport.label}: {plan.service} did not stop: "
                              f"{result.stderr.strip()}")
        result.check(f"{self.transport.label}: stopping {plan.service}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "stopped"

    def state(self, plan: LaunchPlan) -> ProcessState:
        result = self.transport.run_script(STATE_SCRIPT, [plan.service_dir], timeout=30)
        if not result.ok:
            return ProcessState.UNKNOWN
        word = result.stdout.strip()
        try:
            return ProcessState(word)
        except ValueError:
            return ProcessState.UNKNOWN

    def read_log(self, plan: LaunchPlan, lines: int = 200) -> str:
        result = self.transport.run_script(TAIL_SCRIPT, [plan.log_path, str(lines), "0"],
                                           timeout=30)
        if result.returncode == 3:
            return ""
        try:
            result.check(f"{self.transport.label}: reading the log of {plan.service}")
        except RemoteCommandError:
            return ""
        return result.stdout


def tail_argv(log_path: str, lines: int, follow: bool) -> list[str]:
    """argv (for Transport.popen) that prints, and optionally follows, a log."""
    return ["sh", "-c", TAIL_SCRIPT, "sh", log_path, str(lines), "1" if follow else "0"]
