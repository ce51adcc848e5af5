"""`gpumod preset list|show|schema`: service and mode presets shipped with gpumod."""

from __future__ import annotations

import click

from gpumod.cli.common import console, json_option, plain, print_json, table


@click.group()
def preset() -> None:
    """Service and mode presets (YAML, checked against a schema)."""


@preset.command("list")
@click.option("--kind", type=click.Choice(["service", "mode"]), default=None)
@json_option
def list_cmd(kind: str | None, as_json: bool) -> None:
    """Every preset: shipped ones and yours ($GPUMOD_HOME/presets)."""
    from gpumod.ops.presets import list_presets

    listed = list_presets(kind)
    for warning in listed.warnings:  # listed, not fatal: the other presets stay usable
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(listed.to_json())
        return
    t = table("KIND", "NAME", "ENGINE", "MODEL / SERVICES", "SLEEP", "DESCRIPTION")
    for p in listed.items:
        if p["kind"] == "service":
            t.add_row("service", plain(p["name"]), p["engine"], plain(p["model"]), p["sleep"],
                      plain(p["description"][:70]))
        else:
            t.add_row("mode", plain(p["name"]), "", plain(", ".join(p["services"]) or "(none)"),
                      "", plain(p["description"][:70]))
    console().print(t)


@preset.command("show")
@click.argument("name")
@click.option("--kind", type=click.Choice(["service", "mode"]), default=None)
@json_option
def show_cmd(name: str, kind: str | None, as_json: bool) -> None:
    """One preset in full (YAML)."""
    from gpumod.ops.presets import show_preset

    item, text = show_preset(name, kind)
    if as_json:
        print_json({**item.preset.model_dump(mode="json"), "source": item.source})
        return
    click.echo(f"# {item.path} ({item.source})")
    click.echo(text, nl=False)


@preset.command("schema")
def schema_cmd() -> None:
    """The JSON Schema presets are checked against."""
    from gpumod.ops.presets import preset_schema

    print_json(preset_schema())
