"""`gpumod watch`: health checks, restarts and idle sleep in the foreground."""

from __future__ import annotations

import click

from gpumod.cli.common import pod_option, store


@click.command()
@pod_option
@click.option("--interval", type=float, default=10, show_default=True,
              help="Seconds between rounds.")
@click.option("--once", is_flag=True, help="One round, then exit.")
@click.option("--iterations", type=int, default=None, help="Stop after N rounds.")
@click.option("--fail-threshold", type=int, default=3, show_default=True,
              help="Failed health checks in a row before a restart.")
@click.option("--max-restarts", type=int, default=3, show_default=True,
              help="Restarts allowed per service within --restart-window.")
@click.option("--restart-window", type=float, default=600, show_default=True)
@click.option("--idle-ttl", type=float, default=600, show_default=True,
              help="Default idle seconds before a sleep-on-idle service sleeps.")
@click.option("--no-restart", is_flag=True, help="Only report crashed services.")
@click.option("--no-idle-sleep", is_flag=True, help="Never put idle services to sleep.")
@click.option("--install-unit", is_flag=True,
              help="Install, enable and start this watcher (same flags) as a systemd unit.")
@click.option("--print-unit", is_flag=True, help="Print that systemd unit; change nothing.")
@click.option("--scope", type=click.Choice(["user", "system"]), default=None,
              help="systemd manager for --install-unit/--print-unit (default: user where a "
                   "user manager runs, else system).")
def watch(pod: str | None, interval: float, once: bool, iterations: int | None,
          fail_threshold: int, max_restarts: int, restart_window: float, idle_ttl: float,
          no_restart: bool, no_idle_sleep: bool, install_unit: bool, print_unit: bool,
          scope: str | None) -> None:
    """Watch a host's services: restart crashed ones, sleep idle ones, log every action.

    With --install-unit it runs as its own systemd unit, gpumod-watch@POD.service,
    with the same pod and policy flags (--print-unit shows the unit first).
    """
    import math
    import time

    from gpumod.errors import UsageError
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.watch import Policy
    from gpumod.ops.watch import watch as run

    if not all(math.isfinite(v) for v in (interval, restart_window, idle_ttl)):
        raise UsageError("--interval, --restart-window and --idle-ttl must be finite numbers")
    if interval <= 0 or fail_threshold < 1 or max_restarts < 0 or idle_ttl < 0 \
            or restart_window < 0:
        raise UsageError("--interval and --fail-threshold must be positive, --max-restarts, "
                         "--restart-window and --idle-ttl not negative")
    if iterations is not None and iterations < 1:
        raise UsageError("--iterations must be at least 1")
    as_unit = install_unit or print_unit
    if as_unit and (once or iterations is not None):
        raise UsageError("--once and --iterations cannot go into the watcher's unit",
                         hint="a unit watches until it is stopped")
    if scope and not as_unit:
        raise UsageError("--scope goes with --install-unit or --print-unit")
    if install_unit and print_unit:
        raise UsageError("give --install-unit or --print-unit, not both")
    st = store()
    host = hosts_ops.resolve_host(st, pod).name
    policy = Policy(interval=interval, fail_threshold=fail_threshold, max_restarts=max_restarts,
                    restart_window=restart_window, default_idle_ttl=idle_ttl,
                    restart=not no_restart, idle_sleep=not no_idle_sleep)
    if print_unit:
        from gpumod.ops.watch import watch_unit

        _, text = watch_unit(host, policy, scope=scope or "user")
        click.echo(text, nl=False)
        return
    if install_unit:
        from gpumod.ops.watch import install_watch_unit

        unit, path, used = install_watch_unit(host, policy, scope=scope)
        user = "--user " if used == "user" else ""
        click.echo(f"installed {path or unit}; enabled and started {unit}")
        click.echo(f"logs: journalctl {user}-u {unit}; stop: systemctl {user}disable --now {unit}")
        return

    def log(message: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {host} {message}")

    if once:
        log("checking once")
    else:
        log(f"watching (every {interval:g}s; Ctrl+C stops)")
    run(st, host, iterations=1 if once else iterations, policy=policy, log=log)
