"""The operations layer: what the CLI, the MCP server and the TUI all call."""
