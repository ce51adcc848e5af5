"""gpumod's MCP server (`gpumod mcp`), a thin front end over `gpumod.ops.api`.

`gpumod.ops.api` has no dependency on the MCP SDK: the TUI and `gpumod plan`
use it too. Only `gpumod.mcp.server` imports the SDK (the `mcp` extra).
"""
