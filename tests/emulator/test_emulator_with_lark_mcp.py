"""The pinned lark-mcp, pointed at the emulator with -d, gets answers it understands."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from larkgate.emulator import RunningEmulator
from larkgate.emulator.control_client import EmulatorControl

LARK_MCP = Path(__file__).parents[2] / "node_modules/@larksuiteoapi/lark-mcp/dist/cli.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not LARK_MCP.exists(),
    reason="needs node and the pinned lark-mcp (scripts/setup.sh installs both)",
)


def _call_tools(
    url: str, token_args: list[str], calls: list[tuple[str, object]], home: Path
) -> list[str]:
    """Run lark-mcp over stdio, call each tool once, return each result's text."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "emulator-test", "version": "0"},
        },
    }
    messages: list[tuple[int | None, dict[str, object]]] = [
        (0, initialize),
        (None, {"jsonrpc": "2.0", "method": "notifications/initialized"}),
    ]
    messages += [
        (
            i,
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": n, "arguments": a},
            },
        )
        for i, (n, a) in enumerate(calls, start=1)
    ]
    assert NODE is not None
    command = [NODE, str(LARK_MCP), "mcp", "-a", "cli_emulator", "-s", "emulator-secret"]
    child = subprocess.Popen(
        [*command, "-d", url, *token_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": str(Path(NODE).parent), "HOME": str(home)},
    )
    assert child.stdin is not None and child.stdout is not None
    # A stuck child would block readline forever; killing it turns that into a failure.
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        texts = []
        for request_id, message in messages:
            child.stdin.write(json.dumps(message) + "\n")
            child.stdin.flush()
            if request_id is None:
                continue
            answer = json.loads(child.stdout.readline())
            if request_id:
                texts.append(answer["result"]["content"][0]["text"])
        return texts
    finally:
        watchdog.cancel()
        child.kill()
        child.wait(timeout=10)


def test_user_and_tenant_calls_reach_the_emulator_as_the_right_caller(
    emulator: RunningEmulator, control: EmulatorControl, tmp_path: Path
) -> None:
    alice = emulator.state.config.users[0]
    access = control.login("alice")["access_token"]
    control.reset_calls()

    as_user, as_app = _call_tools(
        emulator.url,
        ["-u", str(access)],
        [
            ("im_v1_chat_list", {"params": {}, "useUAT": True}),
            ("im_v1_chat_list", {"params": {}, "useUAT": False}),
        ],
        tmp_path,
    )

    assert "Alice's team chat" in as_user
    assert "App notifications" in as_app
    chats = control.calls("/open-apis/im/v1/chats")
    assert [(c["token_kind"], c["open_id"]) for c in chats] == [
        ("user", alice.open_id),
        ("tenant", None),
    ]
    assert control.calls("/open-apis/auth/v3/tenant_access_token/internal")[0]["code"] == 0
