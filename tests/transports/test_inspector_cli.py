"""The MCP Inspector's command line, a client no one here wrote, against both transports."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from larkgate.emulator import RunningEmulator
from support import REPO, GatewayServer, login_link_in

INSPECTOR = REPO / "node_modules/.bin/mcp-inspector"


def _inspect(*args: str) -> dict[str, object]:
    if not INSPECTOR.exists():
        pytest.fail("the MCP Inspector is not installed: run `npm ci --ignore-scripts`")
    out = subprocess.run(
        [str(INSPECTOR), "--cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": "/tmp", "NO_PROXY": "*"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reply: dict[str, object] = json.loads(out.stdout)
    return reply


def test_inspector_lists_the_tools_over_streamable_http_and_sse(gateway: GatewayServer) -> None:
    over_http = _inspect(f"{gateway.url}/mcp", "--transport", "http", "--method", "tools/list")
    over_sse = _inspect(f"{gateway.url}/sse", "--method", "tools/list")
    names = {t["name"] for t in over_http["tools"]}  # type: ignore[attr-defined]
    assert "im_v1_chat_list" in names
    assert names == {t["name"] for t in over_sse["tools"]}  # type: ignore[attr-defined]


def test_inspector_call_without_login_gets_a_working_login_link(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    reply = _inspect(
        f"{gateway.url}/sse",
        "--method",
        "tools/call",
        "--tool-name",
        "im_v1_chat_list",
        "--tool-arg",
        'params={"page_size":5}',
    )
    assert reply["isError"] is True
    text = reply["content"][0]["text"]  # type: ignore[index]
    assert "login_required" in text
    assert not emulator.state.calls.matching("/open-apis/im/")
    # The Inspector has closed its stream, so its session and its login link have ended.
    page = httpx.get(login_link_in(text), timeout=30, trust_env=False)
    assert page.status_code == 404 and "unknown_session" in page.text
