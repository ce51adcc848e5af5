"""`gpumod tui`: live GPU and service dashboard with a command line."""

from __future__ import annotations

import click

from gpumod.cli.common import pod_option


@click.command("tui", context_settings={"help_option_names": ["-h", "--help"]})
@pod_option
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes.")
def tui(pod: str | None, interval: float) -> None:
    """Live view: one VRAM bar per GPU, services with their states, a command line.

    \b
    Commands: /status  /switch MODE  /simulate MODE --add NAME  /sleep NAME  /wake NAME
              /logs NAME  /start NAME  /stop NAME  /host NAME  /help  /quit
    Keys:     q quit · r refresh · h next host · / command · ? help
    """
    from gpumod.cli.mcp_cmd import require_extra

    require_extra("textual", "`gpumod tui`")
    from gpumod.tui.app import GpumodApp

    GpumodApp(pod=pod, interval=interval).run()
