"""gpumod's MCP server (`gpumod mcp`) and the thin bridge the front ends share.

`gpumod.mcp.bridge` has no dependency on the MCP SDK: the TUI and `gpumod plan`
use it too. Only `gpumod.mcp.server` imports the SDK (the `mcp` extra).
"""
