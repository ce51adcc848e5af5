"""Host-side checks: what listens, is a service's process alive, does it answer HTTP.

All of it runs ON the host (through its transport), so pods need no public
port for gpumod to see their services, and one round trip answers for every
service of a host: `pi list` makes one SSH call per host, whatever the
number of services.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpumod.hosts.transports.base import Transport
from gpumod.supervise.process import SH_FUNCTIONS

# An HTTP status code for a URL, from the host itself: curl, else python3, else 000.
# probe URL [SECONDS]: at most SECONDS (default 3) for the whole answer.
PROBE_FUNCTION = r"""
probe() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time "${2:-3}" "$1" \
      2>/dev/null || true
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c '
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")' "$1" "${2:-3}" 2>/dev/null || printf 000
  else
    printf 000
  fi
}
"""

LISTEN_LINES = r"""
for f in /proc/net/tcp /proc/net/tcp6; do
  [ -r "$f" ] && awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print "listen=" a[2] }' "$f"
done
"""

# systemd's view of a unit: "<word> <MainPID>" where word is alive | dead | stopped | missing
# | unknown. $1 scope (user|system), $2 unit.
UNIT_FUNCTION = r"""
unit_state() {
  if [ "$1" = user ]; then
    props=$(systemctl --user show "$2" --property=LoadState,ActiveState,SubState,MainPID 2>/dev/null)
  else
    props=$(systemctl show "$2" --property=LoadState,ActiveState,SubState,MainPID 2>/dev/null)
  fi
  load=$(printf '%s\n' "$props" | sed -n 's/^LoadState=//p')
  active=$(printf '%s\n' "$props" | sed -n 's/^ActiveState=//p')
  sub=$(printf '%s\n' "$props" | sed -n 's/^SubState=//p')
  mpid=$(printf '%s\n' "$props" | sed -n 's/^MainPID=//p')
  [ "$mpid" = 0 ] && mpid=
  if [ -z "$active" ]; then echo "unknown -"
  elif [ "$load" = not-found ]; then echo "missing -"
  elif [ "$sub" = auto-restart ] || [ "$active" = failed ]; then echo "dead ${mpid:--}"
  else case $active in
    active|activating|reloading|deactivating) echo "alive ${mpid:--}" ;;
    inactive) echo "stopped -" ;;
    *) echo "unknown ${mpid:--}" ;;
  esac; fi
}
"""

# Does a process of group/session $1 hold the listening socket of port $2? (Linux /proc;
# elsewhere assume yes.) Guards against another program answering on "our" port.
OWNER_FUNCTION = r"""
owns_port() {
  [ -r /proc/net/tcp ] || return 0
  hex=$(printf ':%04X' "$2")
  inodes=$(awk -v p="$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p \
    { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  [ -n "$inodes" ] || return 1
  for m in $(members "$1"); do
    for i in $inodes; do
      ls -l "/proc/$m/fd" 2>/dev/null | grep -q "socket:\[$i\]" && return 0
    done
  done
  return 1
}
"""

# The status script's two concurrent halves, each printing "<kind> <service index> <value>"
# lines. http_codes: every health URL at once, in ONE curl (--parallel, curl 7.66+), else
# one `probe` per service in the background. owners: the owns_port question for every
# service at once (one `ls` of the leaders' fds; one pass over the process table and one
# `ls` of the members' fds for the rest), each "N:pid:port" in $1 answered yes or no.
STATUS_FUNCTIONS = r"""
# shellcheck disable=SC2154 # u is set through eval
http_codes() {
  set --
  i=0
  while [ "$i" -lt "$n" ]; do
    eval "u=\$url_$i"
    [ "$i" -gt 0 ] && set -- "$@" --next
    set -- "$@" -g -s -o /dev/null --connect-timeout 2 --max-time "$wait_s" \
      -w "code $i %{http_code}\n" "$u"
    i=$((i + 1))
  done
  out=
  if [ "$n" -gt 0 ] && command -v curl >/dev/null 2>&1; then
    out=$(curl --parallel "$@" 2>/dev/null)
  fi
  if [ -n "$out" ]; then printf '%s\n' "$out"; return; fi
  i=0
  while [ "$i" -lt "$n" ]; do
    eval "u=\$url_$i"
    ( printf 'code %s %s\n' "$i" "$(probe "$u" "$wait_s")" ) &
    i=$((i + 1))
  done
  wait
}
owners() {
  if [ ! -r /proc/net/tcp ]; then
    for c in $1; do echo "owner ${c%%:*} yes"; done
    return
  fi
  # Engines mostly hold their port in the group's leader itself: look there first, and
  # scan the process table only for the services where that finds nothing.
  leaders=
  for c in $1; do c=${c#*:}; leaders="$leaders ${c%%:*}:${c%%:*}"; done
  found=" $(holders "$1" "$leaders") "
  again=
  for c in $1; do
    case $found in *" ${c%%:*}=yes "*) echo "owner ${c%%:*} yes" ;; *) again="$again $c" ;; esac
  done
  [ -n "$again" ] || return 0
  leaders=
  for c in $again; do c=${c#*:}; leaders="$leaders ${c%%:*}"; done
  # "member:leader" for every live process whose group or session a leader leads
  members=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v want="$leaders" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) lead[w[i]] = 1 }
    { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
      if (f[1] == "Z") next
      if (f[3] in lead) printf "%s:%s ", pid, f[3]
      if (f[4] in lead && f[4] != f[3]) printf "%s:%s ", pid, f[4] }')
  for t in $(holders "$again" "$members"); do echo "owner ${t%=*} ${t#*=}"; done
}
holders() {
  # "N=yes|no" for each "N:pid:port" in $1: does one of the "member:leader" processes in
  # $2 whose leader is pid hold the listening socket of port?
  fds=/dev/null  # a second operand, so ls heads every folder with its name
  for m in $2; do fds="$fds /proc/${m%%:*}/fd"; done
  tcp6=
  [ -r /proc/net/tcp6 ] && tcp6=/proc/net/tcp6
  # shellcheck disable=SC2086 # several operands on purpose
  { cat /proc/net/tcp $tcp6; echo "%%fds"; ls -l $fds 2>/dev/null; } |
    awk -v checks="$1" -v members="$2" '
      BEGIN { n = split(members, mm, " ")
              for (i = 1; i <= n; i++) { split(mm[i], x, ":"); lead[x[1]] = lead[x[1]] " " x[2] } }
      $0 == "%%fds" { fds = 1; next }
      !fds { if ($4 == "0A") { split($2, a, ":"); port[$10] = a[2] } next }
      /^\/proc\/[0-9]+\/fd:$/ { split($0, d, "/"); member = d[3]; next }
      /socket:\[[0-9]+\]$/ { ino = $NF; gsub(/[^0-9]/, "", ino)
        if (ino in port) { k = split(lead[member], l, " ")
                           for (j = 1; j <= k; j++) held[l[j] ":" port[ino]] = 1 } }
      END { n = split(checks, cc, " ")
            for (i = 1; i <= n; i++) { split(cc[i], c, ":")
              printf "%s=%s ", c[1], ((c[2] ":" sprintf("%04X", c[3])) in held) ? "yes" : "no" } }'
}
"""

# One service per 7 args: folder, port, health path, host to probe, systemd scope and unit
# ("" for the process supervisor: its pid file says), owner check (1: when something
# answers, does the service's own process group hold the port?). One line each (any
# order): folder, pid, process word, HTTP code, owner (yes | no | -).
# Cheap on purpose (`pi list` waits for it): the process words come from builtins, then
# the health answers and the port owners are asked for all services at once, concurrently.
STATUS_SCRIPT = SH_FUNCTIONS + PROBE_FUNCTION + UNIT_FUNCTION + STATUS_FUNCTIONS + r"""
wait_s=$1; shift
n=0; checks=
while [ $# -ge 7 ]; do
  dir=$1; port=$2; path=$3; phost=$4; scope=$5; unit=$6; owner=$7; shift 7
  pid=
  if [ -n "$unit" ]; then
    r=$(unit_state "$scope" "$unit"); p=${r%% *}; pid=${r#* }; [ "$pid" = - ] && pid=
  else
    start=
    [ -r "$dir/service.pid" ] && read -r pid 2>/dev/null < "$dir/service.pid"
    [ -r "$dir/service.pidstart" ] && read -r start 2>/dev/null < "$dir/service.pidstart"
    if [ -z "$pid" ]; then
      if [ -f "$dir/manifest.json" ] && [ ! -f "$dir/stopped" ]; then p=gone
      elif [ -d "$dir" ]; then p=stopped
      else p=missing; fi
    elif group_alive "$pid" "$start"; then p=alive
    else p=dead; fi
  fi
  # shellcheck disable=SC2034 # read through eval
  url="http://$phost:$port$path"
  eval "dir_$n=\$dir pid_$n=\$pid p_$n=\$p url_$n=\$url"
  if [ "$owner" = 1 ] && [ "$p" = alive ] && [ -n "$pid" ]; then
    checks="$checks $n:$pid:$port"
  fi
  n=$((n + 1))
done
{
  http_codes &
  [ -n "$checks" ] && owners "$checks"
  wait
} | {
  # shellcheck disable=SC2034 # value is read through eval
  while read -r kind i value; do
    case $kind:$i in code:*[!0-9]*|owner:*[!0-9]*) continue ;; code:?*|owner:?*) ;; *) continue ;; esac
    eval "${kind}_$i=\$value"
  done
  i=0
  while [ "$i" -lt "$n" ]; do
    eval "dir=\$dir_$i pid=\$pid_$i p=\$p_$i code=\${code_$i:-000} o=\${owner_$i:--}"
    case $code in [0-9][0-9][0-9]) ;; *) code=000 ;; esac
    [ "$code" = 000 ] && o=-
    printf '%s\t%s\t%s\t%s\t%s\n' "$dir" "${pid:--}" "$p" "$code" "$o"
    i=$((i + 1))
  done
}
echo "%%gpumod-status-done%%"
"""

# Wait for health while the log streams on stdout. Exit 0 healthy, 3 process exited,
# 4 deadline passed. Args: folder, port, path, probe host, deadline seconds, ok codes, pid
# ("" = the pid file's), owner check (1: the answer must come from the service's own
# process group; 0 for servers whose port another process holds, e.g. docker's proxy).
WAIT_SCRIPT = SH_FUNCTIONS + PROBE_FUNCTION + OWNER_FUNCTION + r"""
dir=$1; port=$2; path=$3; phost=$4; deadline=$5; okcodes=$6; pid=${7:-}; owner=${8:-1}
if [ -n "$pid" ]; then start=$(starttime "$pid")
else
  pid=$(cat "$dir/service.pid" 2>/dev/null || true)
  start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
fi
tail -n +1 -F "$dir/service.log" 2>/dev/null &
tp=$!
trap 'kill $tp 2>/dev/null' EXIT
trap 'exit 130' INT TERM HUP PIPE
end=$(( $(date +%s) + deadline ))
while :; do
  code=$(probe "http://$phost:$port$path")
  case " $okcodes " in
    *" $code "*) if [ "$owner" = 0 ] || owns_port "$pid" "$port"; then sleep 0.3; exit 0; fi ;;
  esac
  if ! pid_alive "$pid" "$start"; then sleep 0.5; exit 3; fi
  [ "$(date +%s)" -ge "$end" ] && exit 4
  sleep 0.25
done
"""


@dataclass(frozen=True)
class Probe:
    service_dir: str
    pid: int | None
    process: str  # alive | dead | gone | stopped | missing
    http: int     # 0 when nothing answered
    owner: bool | None = None  # the answer came from the service's own group (None: unchecked)


def probe_host(transport: Transport, items: Sequence[tuple], *, timeout: float = 30,
               health_timeout: float = 3) -> dict[str, Probe]:
    """Process, HTTP and port-owner state of services on one host, in ONE round trip.

    items: (service_dir, port, health_path, probe_host[, systemd scope, unit[, owner
    check]]); health_timeout: seconds each health answer may take (listings keep it
    short; the watcher, which restarts on failures, is more patient). Raises
    TransportError when the host cannot be reached; returns {service_dir: Probe} for
    every line the host sent.
    """
    args: list[str] = [str(max(1, int(health_timeout)))]
    for item in items:
        service_dir, port, path, phost = item[:4]
        scope, unit = (item[4], item[5]) if len(item) >= 6 else ("", "")
        owner = item[6] if len(item) >= 7 else True
        args += [service_dir, str(port), path, phost, scope, unit, "1" if owner else "0"]
    result = transport.run_script(STATUS_SCRIPT, args, timeout=timeout + health_timeout)
    result.check(f"{transport.label}: status check")
    probes: dict[str, Probe] = {}
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        service_dir, pid, process, code, owner = parts
        probes[service_dir] = Probe(service_dir, int(pid) if pid.isdigit() else None, process,
                                    int(code) if code.isdigit() else 0,
                                    {"yes": True, "no": False}.get(owner))
    return probes


def parse_listening(stdout: str) -> set[int]:
    ports: set[int] = set()
    for line in stdout.splitlines():
        if line.startswith("listen="):
            try:
                ports.add(int(line[7:].strip(), 16))
            except ValueError:
                continue
    return ports


def listening_ports(transport: Transport) -> set[int]:
    result = transport.run_script(LISTEN_LINES, timeout=30)
    result.check(f"{transport.label}: listing listening ports")
    return parse_listening(result.stdout)


def wait_argv(service_dir: str, port: int, path: str, probe_host: str, deadline: float,
              ok_codes: Sequence[int], *, pid: int | None = None,
              owner_check: bool = True) -> list[str]:
    """argv for Transport.stream: stream the log until healthy (0), exited (3), timeout (4)."""
    return ["sh", "-c", WAIT_SCRIPT, "sh", service_dir, str(port), path, probe_host,
            str(max(1, int(deadline))), " ".join(str(c) for c in ok_codes),
            str(pid) if pid else "", "1" if owner_check else "0"]
