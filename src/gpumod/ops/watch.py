"""`gpumod watch`: a foreground loop over one host's services.

Each round, for every service recorded as running or sleeping:

- **health**: a service whose process is gone, or whose ``/health`` fails
  ``fail_threshold`` rounds in a row, is restarted by policy (``Restart`` on: at most
  ``max_restarts`` within ``restart_window`` seconds, with exponential backoff between
  attempts); past that it is stopped, recorded failed and left alone (and logged);
- **idle**: a running service with an idle TTL (``extra.idle_ttl``, or ``sleep_on_idle`` in
  the current mode with the default TTL) whose ``/metrics`` show no running or waiting
  requests and no change of the token counters for longer than the TTL is put to rest by
  the same mechanism the gateway uses (ops.idle: the lifecycle's verified sleep, with
  fallbacks; stop where the engine cannot sleep). Without metrics idleness is never guessed.

Each round asks the host once (the one status probe, which also checks who answers on a
service's port), and every action is the lifecycle's own (gpumod.ops.lifecycle): a
restart stops (confirmed) and starts, a give-up stops and records 'failed', an idle
sleep is a verified sleep; each takes the service's lock without waiting, so a service
another command is changing is left alone this round. Every action goes to the events
table and to the log callback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpumod.errors import ConfigError, GpumodError, UsageError
from gpumod.hosts.transports.base import Transport
from gpumod.ops import lifecycle
from gpumod.ops.idle import Activity, rest, service_ttl
from gpumod.ops.lifecycle import Runtime
from gpumod.ops.states import ServiceStatus
from gpumod.spec import ServiceSpec
from gpumod.store.db import Store

_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")
BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting",
        "llamacpp:requests_processing", "llamacpp:requests_deferred")
HEALTH_TIMEOUT = 10.0  # seconds a health answer may take before it counts as a failure
COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total",
            "llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: sum over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC.match(line.strip())
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out


@dataclass
class Policy:
    interval: float = 10.0
    fail_threshold: int = 3
    max_restarts: int = 3
    restart_window: float = 600.0
    backoff_base: float = 5.0
    backoff_max: float = 300.0
    default_idle_ttl: float = 600.0
    restart: bool = True
    idle_sleep: bool = True


@dataclass
class Track:
    failures: int = 0
    restarts: list[float] = field(default_factory=list)
    next_restart: float = 0.0
    gave_up: bool = False
    counters: tuple[float, ...] | None = None
    activity: Activity = field(default_factory=Activity)


class Watcher:
    def __init__(self, store: Store, host: str, *, policy: Policy | None = None,
                 log: Callable[[str], None] = print, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.host = host
        self.policy = policy or Policy()
        self.log = log
        self.transport = transport
        self.clock = clock
        self.tracks: dict[str, Track] = {}

    def action(self, service: str, what: str, detail: str = "") -> None:
        self.store.log_event(f"watch-{what}", host=self.host, service=service, detail=detail)
        self.log(f"{service}: {what}" + (f" ({detail})" if detail else ""))

    def idle_ttl(self, rt: Runtime, sleepy: set[str]) -> float | None:
        default = self.policy.default_idle_ttl if rt.spec.name in sleepy else None
        return service_ttl(rt.spec, default)

    def round(self) -> None:
        from gpumod.ops import hosts as hosts_ops
        from gpumod.ops.modes import current_mode, get_mode
        from gpumod.ops.states import host_status

        sleepy: set[str] = set()
        mode = current_mode(self.store, self.host)
        if mode:
            try:
                sleepy = set(get_mode(self.store, mode).sleep_on_idle)
            except GpumodError:
                sleepy = set()
        specs = [s for s in lifecycle.list_services(self.store, self.host)
                 if s.state in {"running", "sleeping"}]
        if not specs:
            return
        host = hosts_ops.get_host(self.store, self.host)
        for status in host_status(self.store, host, specs, transport=self.transport,
                                  health_timeout=HEALTH_TIMEOUT):
            track = self.tracks.setdefault(status.spec.name, Track())
            try:
                self.check(status, track, sleepy)
            except GpumodError as exc:
                self.action(status.spec.name, "error", exc.message)

    def check(self, status: ServiceStatus, track: Track, sleepy: set[str]) -> None:
        """One service's live state (the one status probe) -> nothing, idle sleep, restart."""
        now = self.clock()
        spec = status.spec
        if status.state in ("unreachable", "unknown"):
            self.log(f"{spec.name}: state unknown ({status.detail})")
            return
        if status.state in ("running", "sleeping"):
            track.failures = 0
            track.gave_up = False
            if status.state == "running":
                self.idle(spec, track, sleepy, now)
            return
        if status.process == "running":
            track.failures += 1
            self.log(f"{spec.name}: health {status.health} ({status.detail}), "
                     f"{track.failures}/{self.policy.fail_threshold}")
        else:
            track.failures = self.policy.fail_threshold  # crashed: act now
            self.action(spec.name, "crashed", status.detail)
        if track.failures < self.policy.fail_threshold or not self.policy.restart:
            return
        self.restart(spec, track, now)

    def restart(self, spec: ServiceSpec, track: Track, now: float) -> None:
        if track.gave_up or now < track.next_restart:
            return
        track.restarts = [t for t in track.restarts if now - t < self.policy.restart_window]
        if len(track.restarts) >= self.policy.max_restarts:
            track.gave_up = True
            why = f"{len(track.restarts)} restarts in {self.policy.restart_window:g}s"
            with lifecycle.changing(self.store, spec.name, "watch: give up", wait=0) as cur:
                lifecycle.stop_held(self.store, cur, forget=False, transport=self.transport,
                                    failed=f"watch gave up: {why}")
            self.action(spec.name, "gave-up", why)
            return
        track.restarts.append(now)
        delay = min(self.policy.backoff_max,
                    self.policy.backoff_base * 2 ** (len(track.restarts) - 1))
        track.next_restart = now + delay
        try:
            with lifecycle.changing(self.store, spec.name, "watch: restart", wait=0) as cur:
                lifecycle.stop_held(self.store, cur, forget=False, transport=self.transport)
                lifecycle.ensure_ready_held(self.store, lifecycle.get_service(
                    self.store, spec.name), transport=self.transport)
            track.failures = 0
            self.action(spec.name, "restarted", f"attempt {len(track.restarts)}")
        except GpumodError as exc:
            self.action(spec.name, "restart-failed",
                        f"{exc.message}; next try in {delay:g}s")

    def idle(self, spec: ServiceSpec, track: Track, sleepy: set[str], now: float) -> None:
        rt = lifecycle.runtime(self.store, spec, transport=self.transport)
        ttl = self.idle_ttl(rt, sleepy)
        if not self.policy.idle_sleep or ttl is None:
            return
        answer = rt.endpoint.request("GET", "/metrics", timeout=10)
        if answer.status != 200:
            return  # no metrics: never guess idleness
        metrics = parse_metrics(answer.body)
        busy = sum(metrics.get(k, 0.0) for k in BUSY)
        counters = tuple(metrics.get(k, 0.0) for k in COUNTERS)
        if busy > 0 or counters != track.counters:
            track.counters = counters
            track.activity.observe(now)  # work seen: idle time starts again from now
            return
        if not track.activity.due(now, ttl):
            return
        report = rest(self.store, spec.name, wait=0, transport=self.transport)
        track.activity = Activity()
        self.action(spec.name, "idle-sleep" if report.ok else "idle-sleep-failed",
                    report.summary())


def watch(store: Store, host: str, *, iterations: int | None = None,
          policy: Policy | None = None, log: Callable[[str], None] = print,
          transport: Transport | None = None) -> Watcher:
    watcher = Watcher(store, host, policy=policy, log=log, transport=transport)
    count = 0
    while iterations is None or count < iterations:
        started = time.monotonic()
        watcher.round()
        count += 1
        if iterations is not None and count >= iterations:
            break
        time.sleep(max(0.0, watcher.policy.interval - (time.monotonic() - started)))
    return watcher


# ---------------------------------------------------------------------------- as a unit


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def policy_flags(policy: Policy) -> list[str]:
    """The `gpumod watch` flags that reproduce a policy (every value spelled out)."""
    import math

    for what, value in (("--interval", policy.interval),
                        ("--restart-window", policy.restart_window),
                        ("--idle-ttl", policy.default_idle_ttl)):
        if not math.isfinite(value):
            raise UsageError(f"{what} {value}: expected a finite number of seconds")
    flags = ["--interval", _number(policy.interval),
             "--fail-threshold", str(int(policy.fail_threshold)),
             "--max-restarts", str(int(policy.max_restarts)),
             "--restart-window", _number(policy.restart_window),
             "--idle-ttl", _number(policy.default_idle_ttl)]
    if not policy.restart:
        flags.append("--no-restart")
    if not policy.idle_sleep:
        flags.append("--no-idle-sleep")
    return flags


def gpumod_executable() -> str:
    """Absolute path of the installed `gpumod` command (sys.argv[0], else PATH)."""
    import os
    import shutil
    import sys
    from pathlib import Path

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = []
    if argv0 is not None and argv0.name == "gpumod":
        candidates.append(argv0)
    found = shutil.which("gpumod")
    if found:
        candidates.append(Path(found))
    for cand in candidates:
        path = cand.resolve()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ConfigError("cannot find the installed `gpumod` executable for the unit",
                      hint="install gpumod so that `gpumod` is on PATH (pip/pipx), then run "
                           "`gpumod watch --install-unit` through it")


def watch_unit(host: str, policy: Policy, *, scope: str, home: str | None = None,
               executable: str | None = None, path_env: str | None = None) -> tuple[str, str]:
    """(unit name, unit text) for `gpumod watch --pod HOST <policy flags>` under systemd."""
    import os

    from gpumod.paths import home as gpumod_home
    from gpumod.supervise.units import render_watch_unit, watch_unit_name

    exe = executable or gpumod_executable()
    home_dir = os.path.abspath(os.path.expanduser(str(home or gpumod_home())))
    env = {}
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    if path_env:
        # engines restarted by the watcher are found as they are from this shell
        env["PATH"] = path_env
    argv = [exe, "watch", "--pod", host, *policy_flags(policy)]
    text = render_watch_unit(argv, pod=host, home=home_dir, scope=scope, env=env)
    return watch_unit_name(host), text


def install_watch_unit(host: str, policy: Policy, *, scope: str | None = None,
                       transport: Transport | None = None, **kw: str | None
                       ) -> tuple[str, str, str]:
    """Install, enable and start the watcher's unit on this machine.

    Returns (unit name, unit path, scope). `scope` None: user where a user manager runs,
    else system (as root); neither: ConfigError.
    """
    from gpumod.supervise.systemd import detect_scope, install_and_enable

    if transport is None:
        from gpumod.hosts.transports.local import LocalTransport

        transport = LocalTransport()
    if scope is None:
        scope = detect_scope(transport)
        if scope is None:
            raise ConfigError("no systemd manager to install the watcher under here",
                              hint="run `gpumod watch` in the foreground (tmux), or as root "
                                   "on a systemd host with --scope system")
    unit, text = watch_unit(host, policy, scope=scope, **kw)
    path = install_and_enable(transport, scope, unit, text)
    return unit, path, scope
