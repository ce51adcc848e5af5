"""`gpumod mode ...`: groups of services and transactional switches between them."""

from __future__ import annotations

import click

from gpumod.cli.common import console, info, json_option, plain, pod_option, print_json, store
from gpumod.cli.common import table as make_table


@click.group()
def mode() -> None:
    """Named groups of services on a host; `switch` moves between them safely."""


@mode.command("list")
@pod_option
@json_option
def list_cmd(pod: str | None, as_json: bool) -> None:
    """Modes of the host, the current one marked."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import mode_records

    st = store()
    host = hosts_ops.resolve_host(st, pod).name
    items = mode_records.list_modes(st, host)
    current = mode_records.current_mode(st, host)
    if as_json:
        print_json([{**m.to_json(), "current": m.name == current} for m in items])
        return
    if not items:
        click.echo(f"no modes on {host}; create one with `gpumod mode create NAME --services a,b`")
        return
    t = make_table("", "MODE", "SERVICES", "SLEEP ON IDLE", "DESCRIPTION")
    for m in items:
        t.add_row("*" if m.name == current else "", plain(m.name),
                  plain(", ".join(m.services) or "(none)"), plain(", ".join(m.sleep_on_idle)),
                  plain(m.description))
    console().print(t)


@mode.command("status")
@pod_option
@json_option
def status_cmd(pod: str | None, as_json: bool) -> None:
    """The current mode of the host and the live state of its services."""
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops.mode_status import mode_status

    st = store()
    host = hosts_ops.resolve_host(st, pod).name
    status = mode_status(st, host)
    if as_json:
        print_json(status)
        return
    click.echo(f"{host}: mode {status['current_mode'] or '(none)'}")
    for item in status["services"]:
        extra = " (asleep)" if item.get("sleeping") else ""
        click.echo(f"  {item['name']}: {item.get('process', item['state'])}, health "
                   f"{item.get('health', item.get('error', '?'))}{extra}")


@mode.command("create")
@click.argument("name")
@click.option("--services", required=False, default="", help="Comma-separated service names.")
@click.option("--sleep-on-idle", default="", help="Services `watch` may put to sleep when idle.")
@click.option("--preset", metavar="PRESET",
              help="Take services, sleep-on-idle and description from a mode preset (see "
                   "`gpumod preset list --kind mode`); its services not defined yet are "
                   "defined from their service presets.")
@click.option("--description", default=None)
@pod_option
def create_cmd(name: str, services: str, sleep_on_idle: str, preset: str | None,
               description: str | None, pod: str | None) -> None:
    """Create a mode from existing services of one host, or from a mode preset.

    With --preset, services the preset names that are not defined yet are defined from
    their service presets, all or nothing.

    \b
    gpumod mode create work --services chat,emb --sleep-on-idle emb
    gpumod mode create rag --preset rag --pod dc1
    """
    from gpumod.errors import UsageError
    from gpumod.ops import hosts as hosts_ops
    from gpumod.ops import inputs
    from gpumod.ops import modes as modes_ops

    st = store()
    if preset is not None:
        if services or sleep_on_idle:
            raise UsageError("--preset gives the services; leave out --services and "
                             "--sleep-on-idle", hint="or create the mode without --preset")
        from gpumod.ops.presets import create_mode_from_preset

        made = create_mode_from_preset(st, name, preset, pod=pod, description=description)
        for added in made.defined:
            info(f"defined {added.spec.name} from preset {added.spec.name}: "
                 f"{added.spec.engine} {added.spec.model}, port {added.spec.port}, "
                 f"{added.where}")
            for note in added.notes:
                info(f"note: {note}")
        m = made.mode
    else:
        host = hosts_ops.resolve_host(st, pod).name
        m = modes_ops.create_mode(st, name, inputs.names(services), host=host,
                                  description=description or "",
                                  sleep_on_idle=inputs.names(sleep_on_idle))
    click.echo(f"created mode {m.name} on {m.host}: {', '.join(m.services) or '(no services)'}")


@mode.command("delete")
@click.argument("name")
def delete_cmd(name: str) -> None:
    """Delete a mode (its services stay defined and running)."""
    from gpumod.ops import modes as modes_ops

    m = modes_ops.delete_mode(store(), name)
    click.echo(f"deleted mode {m.name}")


@mode.command("switch")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--keep-warm", is_flag=True,
              help="Put leaving services that can sleep to sleep instead of stopping them.")
@click.option("--no-fit-check", is_flag=True, help="Skip the planner's VRAM check.")
@click.option("--timeout", type=float, default=600, show_default=True,
              help="Seconds to wait for each service to become healthy.")
@json_option
def switch_cmd(name: str, dry_run: bool, keep_warm: bool, no_fit_check: bool, timeout: float,
               as_json: bool) -> None:
    """Switch the host to a mode: stop/sleep what leaves, start/wake what enters, verified.

    On any failure the previous mode is restored and the command exits non-zero.
    """
    from gpumod.ops import modes as modes_ops

    result = modes_ops.switch_mode(store(), name, dry_run=dry_run, keep_warm=keep_warm,
                                   check_capacity=not no_fit_check, timeout=timeout,
                                   progress=info)
    if as_json:
        print_json(result.to_json())
        return
    plan = result.plan
    if dry_run:
        click.echo(f"plan: {plan.host} {plan.previous or '(no mode)'} -> {plan.target}")
        for step in plan.steps() or ["nothing to do"]:
            click.echo(f"  {step}")
        if plan.keep:
            click.echo(f"  keep running: {', '.join(plan.keep)}")
        if plan.implicit:
            click.echo(f"  dependencies added: {', '.join(plan.implicit)}")
        if plan.untouched:
            click.echo(f"  not in any mode, left alone: {', '.join(plan.untouched)}")
        if plan.fit:
            click.echo(f"  VRAM: {plan.fit}")
        click.echo("(dry run: nothing changed)")
        return
    click.echo(f"{plan.host}: now in mode {plan.target}"
               + (f" ({'; '.join(result.done)})" if result.done else " (nothing to change)"))
