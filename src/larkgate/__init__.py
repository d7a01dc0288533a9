"""LarkGate: one MCP endpoint for a whole team, one lark-mcp process per Feishu user."""

__version__ = "0.1.0"
