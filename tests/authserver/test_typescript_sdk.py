"""The TypeScript SDK's OAuth client logs in to the gateway by itself and calls a tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from oauth_person import CHAT_LIST

from larkgate.emulator import RunningEmulator
from support import REPO, GatewayServer, free_port

SCRIPT = Path(__file__).with_name("ts_sdk_client.mjs")
TS_SDK = REPO / "node_modules/@modelcontextprotocol/sdk/package.json"


def test_the_typescript_sdk_logs_in_by_itself_and_its_call_reaches_feishu_as_the_user(
    oauth_gateway: GatewayServer, emulator: RunningEmulator, tmp_path: Path
) -> None:
    if not TS_SDK.is_file():
        pytest.fail("@modelcontextprotocol/sdk is not installed: run `npm ci --ignore-scripts`")
    node = shutil.which("node")
    assert node, "node is not on PATH"
    carol = emulator.state.config.find_user("carol")
    assert carol
    emulator.state.calls.clear()

    run = subprocess.run(
        [
            node,
            str(SCRIPT),
            f"{oauth_gateway.url}/mcp",
            "carol",
            CHAT_LIST,
            str(free_port()),
        ],
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NO_PROXY": "*"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert not outcome["isError"], outcome["text"]
    assert "Carol" in outcome["text"]
    assert outcome["accessToken"].startswith("lga_")
    assert outcome["issuer"] == oauth_gateway.url
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [carol.open_id]
