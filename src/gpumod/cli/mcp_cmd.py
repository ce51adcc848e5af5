"""`gpumod mcp`: serve gpumod's operations to agents (Claude Code and others) over MCP."""

from __future__ import annotations

import importlib.util

import click

from gpumod.errors import ConfigError, UsageError

INSTALL_HINT = "pip install 'gpumod[tui,mcp]'"


def require_extra(module: str, what: str) -> None:
    """Fail with the install command when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs the optional package {module!r}, which is not "
                          "installed", hint=INSTALL_HINT)


@click.command("mcp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio",
              show_default=True,
              help="stdio for a client that starts the server; http for streamable HTTP.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port for --transport http (default 8765); it binds 127.0.0.1 only and "
                   "needs a bearer key in GPUMOD_MCP_KEY (else PI_API_KEY).")
def mcp(transport: str, port: int | None) -> None:
    """Serve gpumod's tools (status, services, modes, simulate, plan) over MCP.

    \b
    Claude Code:  claude mcp add gpumod -- gpumod mcp
    Any client:   {"command": "gpumod", "args": ["mcp"]}
    HTTP:         GPUMOD_MCP_KEY=... gpumod mcp --transport http --port 8765
                  (http://127.0.0.1:8765/mcp, header "Authorization: Bearer $GPUMOD_MCP_KEY")
    """
    if port is not None and transport != "http":
        raise UsageError("--port only goes with --transport http")
    if transport == "http":
        from gpumod.mcp.auth import key_from_env

        key_from_env()  # no key, no server: say so before importing the SDK
    require_extra("mcp", "`gpumod mcp`")
    from gpumod.mcp.server import serve

    serve(transport, host="127.0.0.1", port=port or 8765)
