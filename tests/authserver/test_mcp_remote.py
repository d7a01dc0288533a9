"""mcp-remote, what Claude Desktop runs for remote servers, logs in by itself and calls a tool.

The MCP client here speaks stdio to mcp-remote, as Claude Desktop does; mcp-remote finds the
gateway's OAuth metadata, registers, opens the authorization URL with ``$BROWSER`` (a person
played by ``play_browser.py``), takes the code on its loopback listener and proxies the call.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from oauth_person import CHAT_LIST

from larkgate.emulator import RunningEmulator
from support import REPO, GatewayServer, free_port, tool_text

pytestmark = pytest.mark.anyio

MCP_REMOTE = REPO / "node_modules/mcp-remote/dist/proxy.js"
PLAY_BROWSER = Path(__file__).with_name("play_browser.py")


def browser_program(directory: Path) -> tuple[Path, Path]:
    """An executable for $BROWSER that runs the person with this interpreter; and its log."""
    log = directory / "browser.log"
    program = directory / "browser.sh"
    program.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{PLAY_BROWSER}" "$@" >>"{log}" 2>&1\n'
    )
    program.chmod(0o755)
    return program, log


async def test_mcp_remote_logs_in_by_itself_and_its_call_reaches_feishu_as_the_user(
    oauth_gateway: GatewayServer, emulator: RunningEmulator, tmp_path: Path
) -> None:
    if not MCP_REMOTE.is_file():
        pytest.fail("mcp-remote is not installed: run `npm ci --ignore-scripts`")
    node = shutil.which("node")
    assert node, "node is not on PATH"
    alice = emulator.state.config.find_user("alice")
    assert alice
    program, log = browser_program(tmp_path)
    server = StdioServerParameters(
        command=node,
        args=[
            str(MCP_REMOTE),
            f"{oauth_gateway.url}/mcp",
            str(free_port()),
            "--host",
            "127.0.0.1",
            "--transport",
            "http-only",
            "--auth-timeout",
            "120",
        ],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path / "home"),
            "MCP_REMOTE_CONFIG_DIR": str(tmp_path / "mcp-auth"),
            "BROWSER": str(program),
            "LARKGATE_TEST_USER": "alice",
            "NO_PROXY": "*",
        },
    )
    emulator.state.calls.clear()

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})

    browser_said = log.read_text() if log.exists() else "(the browser never ran)"
    assert "callback answered HTTP 200" in browser_said, browser_said
    assert not result.is_error, tool_text(result)
    assert "Alice" in tool_text(result)
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [alice.open_id]
