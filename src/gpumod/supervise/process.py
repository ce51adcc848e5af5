"""The process supervisor: setsid, own process group, pid file, log file, manifest.

Everything on the host happens through fixed shell scripts shipped here, run
with their inputs as positional parameters (never interpolated), so a
service name, model id or argument can never become shell code.

Start, in two round trips:

1. prepare: the service folder ``<root>/services/NAME/`` is made 0700; stdin carries
   three counted sections, the non-secret environment, the secrets and the manifest,
   which land in ``service.env``, ``secrets.env`` (0600) and ``manifest.json``; then
   ``setsid sh -c '. service.env; . secrets.env; echo $$ > service.pid; <wait>; exec ARGV'``
   runs in the background in the engine's own empty ``work`` folder, its output in
   ``service.log``, and waits. Every write is checked: after a failed one the script
   exits non-zero and nothing of the engine runs (it fails closed).
2. release: the caller has recorded the pid; SIGUSR1 lets the launcher exec the engine.
   A launcher never released exits by itself after HOLD_SECONDS.

The engine therefore is the leader of its own session and process group, its pid is
the group id, its argv holds no secret (``ps`` shows only the engine's argv) and its
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
from gpumod.errors import EngineError, GpumodError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.supervise.base import LaunchPlan, ProcessState, Supervisor

ENV_MARK = "%%gpumod-env%%"
SECRETS_MARK = "%%gpumod-secrets%%"
MANIFEST_MARK = "%%gpumod-manifest%%"

# Shared shell functions: is a pid (still) our process; does a group/session live on.
SH_FUNCTIONS = r"""
starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
pid_alive() {
  # $1 pid, $2 expected start time (may be empty). Zombies count as dead. Builtins only
  # (no fork): status checks call it for every service.
  case $1 in ''|*[!0-9]*) return 1 ;; esac  # not a pid (kill -0 -1 would answer for all)
  kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/stat" ]; then
    IFS= read -r _stat 2>/dev/null < "/proc/$1/stat" || return 1
    # the fields after "(comm) ": state is the 1st, the start time the 20th
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- "$1" "$2" ${_stat##*) }
    [ "$3" = Z ] && return 1
    if [ -n "$2" ]; then [ "${22}" = "$2" ] || return 1; fi
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
group_alive() {
  # $1 the service's pid (its group and session id), $2 its start time: the leader runs,
  # or processes of its group live on after it died (an engine's children holding the
  # GPU). The kernel does not reuse a pid that is still a group id; a pid that now names
  # another process (start time differs) means the group is gone.
  # Builtins until the process table must be read (status checks call it for every
  # service): only a leader that is gone or a zombie costs the scan in members.
  pid_alive "$1" "$2" && return 0
  case $1 in ''|*[!0-9]*) return 1 ;; esac
  if [ -n "$2" ] && [ -r "/proc/$1/stat" ]; then
    IFS= read -r _stat 2>/dev/null < "/proc/$1/stat" || _stat=
    # shellcheck disable=SC2086 # split into fields on purpose
    [ -n "$_stat" ] && set -- "$1" "$2" ${_stat##*) } && [ "${22:-}" != "$2" ] && return 1
  fi
  [ -n "$(members "$1")" ]
}
"""

# Prepare (the first half of a start). Fails closed: every write is checked and the
# engine is never exec'd after a failed one. stdin: three sections, each opened by a
# marker line with the number of lines that follow ("%%gpumod-env%% 3"), so a short
# write is caught as well as a failed one. The launcher is left HELD: it has written its
# pid and waits (at most HOLD_SECONDS) for SIGUSR1 before exec'ing the engine, so the
# caller records the pid before anything of the engine runs; never released, it exits.
START_SCRIPT = SH_FUNCTIONS + r"""
set -u
dir=$1; workdir=$2; hold=$3; shift 3
umask 077
fail() { printf '%s\n' "$1" >&2; exit "${2:-25}"; }
mkdir -p "$dir" || fail "cannot create $dir" 20
chmod 700 "$dir" || fail "cannot protect $dir" 20
old=$(cat "$dir/service.pid" 2>/dev/null || true)
if [ -n "$old" ] && pid_alive "$old" "$(cat "$dir/service.pidstart" 2>/dev/null)"; then
  fail "a process of this service is already running (pid $old)" 21
fi
kept="$(dirname "$dir")/.failed/$(basename "$dir").log"
rm -f "$dir/service.pid" "$dir/service.pidstart" "$dir/stopped" "$kept" ||
  fail "cannot remove the old pid files in $dir" 20
for f in service.env secrets.env manifest.json; do
  : > "$dir/$f.tmp" || fail "cannot write $dir/$f.tmp (disk full or read-only?)" 25
done
target=/dev/null; env_n=-1; sec_n=-1; man_n=-1
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    '%%gpumod-env%% '*) target="$dir/service.env.tmp"; env_n=${line#* }; continue ;;
    '%%gpumod-secrets%% '*) target="$dir/secrets.env.tmp"; sec_n=${line#* }; continue ;;
    '%%gpumod-manifest%% '*) target="$dir/manifest.json.tmp"; man_n=${line#* }; continue ;;
  esac
  printf '%s\n' "$line" >> "$target" || fail "cannot write $target (disk full or read-only?)" 25
done
whole() { [ "$(wc -l < "$dir/$1.tmp")" -eq "$2" ] || fail "cannot write $dir/$1 (short write)" 25; }
whole service.env "$env_n"; whole secrets.env "$sec_n"; whole manifest.json "$man_n"
for f in service.env secrets.env manifest.json; do
  mv -f "$dir/$f.tmp" "$dir/$f" || fail "cannot write $dir/$f" 25
done
command -v setsid >/dev/null 2>&1 || fail "setsid: not found (install util-linux)" 22
if [ -z "$workdir" ]; then
  workdir="$dir/work"
  if ! mkdir -p "$workdir" || ! chmod 700 "$workdir"; then fail "cannot create $workdir" 23; fi
fi
[ -d "$workdir" ] || fail "the working directory $workdir does not exist" 23
: > "$dir/service.log" || fail "cannot write $dir/service.log" 25
cd "$workdir" || fail "cannot enter $workdir" 23
nohup setsid sh -c '
  set -a; . "$1" || exit 97; . "$2" || exit 97; set +a
  echo $$ > "$3.tmp" || exit 98
  mv -f "$3.tmp" "$3" || exit 98
  go=; trap "go=1" USR1
  i=0
  while [ -z "$go" ] && [ "$i" -lt "$4" ]; do sleep 0.1; i=$((i+1)); done
  [ -n "$go" ] || { echo "gpumod: never released; the engine was not started" >&2; exit 99; }
  trap - USR1
  shift 4
  exec "$@"' gpumod-launch "$dir/service.env" "$dir/secrets.env" "$dir/service.pid" \
  "$hold" "$@" >> "$dir/service.log" 2>&1 < /dev/null &
launcher=$!
i=0
while [ ! -s "$dir/service.pid" ] && [ $i -lt 200 ]; do
  kill -0 "$launcher" 2>/dev/null || break
  sleep 0.05; i=$((i+1))
done
if [ ! -s "$dir/service.pid" ]; then
  kill -KILL "$launcher" 2>/dev/null
  why=$(grep -v '^nohup:' "$dir/service.log" 2>/dev/null | tail -n 1)
  fail "the launcher could not write its pid file${why:+: $why}" 24
fi
pid=$(cat "$dir/service.pid")
start=$(starttime "$pid")
if [ -z "$start" ] || ! printf '%s\n' "$start" > "$dir/service.pidstart"; then
  kill -KILL "$pid" 2>/dev/null
  fail "cannot write $dir/service.pidstart" 25
fi
echo "$pid"
"""

# Release (the second half): the held launcher, checked to be ours, may exec the engine.
RELEASE_SCRIPT = SH_FUNCTIONS + r"""
dir=$1; pid=$2
if ! pid_alive "$pid" "$(cat "$dir/service.pidstart" 2>/dev/null)"; then
  why=$(tail -n 1 "$dir/service.log" 2>/dev/null)
  echo "the held launcher is gone${why:+: $why}" >&2; exit 3
fi
kill -USR1 "$pid" || exit 3
"""

# Stop: TERM the group and session, KILL after the timeout; exit 3 if anything survives.
# forget=1 removes the folder (keep=1 first moves the log aside for a failed start).
STOP_SCRIPT = SH_FUNCTIONS + r"""
set -u
dir=$1; timeout=$2; forget=$3; keep=${4:-0}
pid=$(cat "$dir/service.pid" 2>/dev/null || true)
start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
result=not-running
if [ -n "$pid" ] && group_alive "$pid" "$start"; then
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
if [ "$forget" = 1 ]; then
  if [ "$keep" = 1 ] && [ -s "$dir/service.log" ]; then
    failed="$(dirname "$dir")/.failed"
    mkdir -p "$failed" && mv -f "$dir/service.log" "$failed/$(basename "$dir").log" ||
      echo "could not keep the log of $(basename "$dir")" >&2
  fi
  rm -rf "$dir"
elif [ -d "$dir" ]; then : > "$dir/stopped" 2>/dev/null || true; fi
echo "$result"
"""

PID_SCRIPT = SH_FUNCTIONS + r"""
pid=$(cat "$1/service.pid" 2>/dev/null || true)
if pid_alive "$pid" "$(cat "$1/service.pidstart" 2>/dev/null)"; then echo "$pid"; fi
"""

STATE_SCRIPT = SH_FUNCTIONS + r"""
dir=$1
pid=$(cat "$dir/service.pid" 2>/dev/null || true)
start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
if [ -z "$pid" ]; then
  if [ -f "$dir/manifest.json" ] && [ ! -f "$dir/stopped" ]; then echo crashed
  else echo stopped; fi
elif group_alive "$pid" "$start"; then echo running
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


HOLD_SECONDS = 120  # a held launcher never released in this time exits (engine never run)


def section(mark: str, body: str) -> str:
    """One stdin section of the start script: its marker with its line count, then its lines."""
    return f"{mark} {body.count(chr(10))}\n{body}"


class ProcessSupervisor(Supervisor):
    name = "process"

    def __init__(self, transport: Transport, *, manifest: Mapping | None = None) -> None:
        self.transport = transport
        self.manifest = dict(manifest or {})

    def prepare(self, plan: LaunchPlan, secrets: dict[str, str]) -> int | None:
        if not plan.service_dir or not plan.argv:
            raise UsageError("a launch plan needs a service folder and an argv")
        manifest = {**self.manifest, "service": plan.service, "argv": list(plan.argv),
                    "env": dict(plan.env), "supervisor": self.name,
                    "log": plan.log_path, "pid_file": plan.pid_path}
        # the manifest and argv are not secret stores (raw values: a key may hold '"')
        validate.no_secret_in([manifest], secrets.values(), "service's argv or environment")
        stdin = (section(ENV_MARK, env_file_body(plan.env))
                 + section(SECRETS_MARK, env_file_body(secrets))
                 + section(MANIFEST_MARK, json.dumps(manifest, sort_keys=True) + "\n"))
        result = self.transport.run_script(
            START_SCRIPT, [plan.service_dir, plan.workdir or "", str(HOLD_SECONDS * 10),
                           *plan.argv], input=stdin, timeout=60)
        if not result.ok:
            detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
            raise EngineError(f"{self.transport.label}: could not launch {plan.service}: "
                              f"{detail[0]}", hint="nothing of the engine was started")
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EngineError(f"{self.transport.label}: the launcher printed no pid "
                              f"for {plan.service}") from None

    def release(self, plan: LaunchPlan, held: int | None) -> int | None:
        if held is None:
            raise EngineError(f"{plan.service}: no held launcher to release")
        result = self.transport.run_script(RELEASE_SCRIPT, [plan.service_dir, str(held)],
                                           timeout=30)
        if not result.ok:
            detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
            raise EngineError(f"{self.transport.label}: could not launch {plan.service}: "
                              f"{detail[0]}")
        return held

    def _stop(self, plan: LaunchPlan, timeout: float, forget: bool, keep_log: bool) -> str:
        result = self.transport.run_script(
            STOP_SCRIPT, [plan.service_dir, str(max(1, int(timeout))), "1" if forget else "0",
                          "1" if keep_log else "0"], timeout=timeout + 30)
        if result.returncode == 3:
            raise EngineError(f"{self.transport.label}: {plan.service} did not stop: "
                              f"{result.stderr.strip()}")
        result.check(f"{self.transport.label}: stopping {plan.service}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "stopped"

    def stop(self, plan: LaunchPlan, *, timeout: float = 20) -> str:
        return self._stop(plan, timeout, False, False)

    def remove(self, plan: LaunchPlan, *, timeout: float = 20, keep_log: bool = False) -> str:
        return self._stop(plan, timeout, True, keep_log)

    def state(self, plan: LaunchPlan) -> ProcessState:
        try:
            result = self.transport.run_script(STATE_SCRIPT, [plan.service_dir], timeout=30)
        except GpumodError:
            return ProcessState.UNKNOWN
        if not result.ok:
            return ProcessState.UNKNOWN
        try:
            return ProcessState(result.stdout.strip())
        except ValueError:
            return ProcessState.UNKNOWN

    def pid(self, plan: LaunchPlan) -> int | None:
        result = self.transport.run_script(PID_SCRIPT, [plan.service_dir], timeout=30)
        text = result.stdout.strip()
        return int(text) if result.ok and text.isdigit() else None

    def read_log(self, plan: LaunchPlan, lines: int = 200) -> str:
        return read_log_file(self.transport, plan.log_path, lines)


def read_log_file(transport: Transport, path: str, lines: int) -> str:
    """The last lines of a log file on the host ('' when missing or unreadable)."""
    try:
        result = transport.run_script(TAIL_SCRIPT, [path, str(lines), "0"], timeout=30)
    except GpumodError:
        return ""
    return result.stdout if result.ok else ""


def tail_argv(log_path: str, lines: int, follow: bool) -> list[str]:
    """argv (for Transport.stream) that prints, and optionally follows, a log."""
    return ["sh", "-c", TAIL_SCRIPT, "sh", log_path, str(lines), "1" if follow else "0"]
