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

# One service per 7 args: folder, port, health path, host to probe, systemd scope and unit
# ("" for the process supervisor: its pid file says), owner check (1: when something
# answers, does the service's own process group hold the port?). One line each (any
# order): folder, pid, process word, HTTP code, owner (yes | no | -).
STATUS_SCRIPT = SH_FUNCTIONS + PROBE_FUNCTION + UNIT_FUNCTION + OWNER_FUNCTION + r"""
wait_s=$1; shift
while [ $# -ge 7 ]; do
  dir=$1; port=$2; path=$3; phost=$4; scope=$5; unit=$6; owner=$7; shift 7
  (
    if [ -n "$unit" ]; then
      set -- $(unit_state "$scope" "$unit"); p=$1; pid=$2; [ "$pid" = - ] && pid=
    else
      pid=$(cat "$dir/service.pid" 2>/dev/null || true)
      start=$(cat "$dir/service.pidstart" 2>/dev/null || true)
      if [ -z "$pid" ]; then
        if [ -f "$dir/manifest.json" ] && [ ! -f "$dir/stopped" ]; then p=gone
        elif [ -d "$dir" ]; then p=stopped
        else p=missing; fi
      elif group_alive "$pid" "$start"; then p=alive
      else p=dead; fi
    fi
    code=$(probe "http://$phost:$port$path" "$wait_s")
    o=-
    if [ "$owner" = 1 ] && [ "$p" = alive ] && [ -n "$pid" ] && [ "${code:-000}" != 000 ]; then
      if owns_port "$pid" "$port"; then o=yes; else o=no; fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$dir" "${pid:--}" "$p" "${code:-000}" "$o"
  ) &
done
wait
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
