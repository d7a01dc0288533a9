"""Logs: JSON lines with context, and not one secret in them after a full run."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ops_support import ACCEPT, Seen, call_tool, login, open_session

from larkgate.emulator import RunningEmulator
from larkgate.logs import setup_logging
from larkgate.userkey import user_key
from support import GatewayServer


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line of the process, as `larkgate serve` writes it when not on a terminal."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    stream = io.StringIO()
    setup_logging("DEBUG", "auto", stream=stream)
    yield stream
    root.handlers[:], root.level = before


def sse_session(url: str, seen: Seen) -> None:
    """Open an SSE stream, learn its session id, send one message, close it."""
    with (
        httpx.Client(base_url=url, timeout=30, trust_env=False) as http,
        http.stream("GET", "/sse") as stream,
    ):
        lines = stream.iter_lines()
        endpoint = next(line for line in lines if line.startswith("data:"))[5:].strip()
        seen.session_ids.append(endpoint.split("sessionId=")[1])
        ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        assert http.post(endpoint, json=ping, headers=ACCEPT).status_code == 202
        assert any(line.startswith("event: message") for line in lines)


def test_no_token_code_state_session_id_or_user_id_reaches_any_log(
    captured: io.StringIO,
    start_gateway: Callable[..., GatewayServer],
    emulator: RunningEmulator,
    tmp_path: Path,
) -> None:
    gateway = start_gateway(feishu_probe_interval=0)
    alice = emulator.state.config.find_user("alice")
    assert alice is not None
    seen = Seen()
    secrets = [emulator.state.config.app_secret]

    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        session_id, link = open_session(http, seen)
        assert call_tool(http, session_id).get("isError")  # the login link, not a result
        assert login(link, "alice", seen).status_code == 200
        first = gateway.gateway.store.load_tokens(alice.open_id)
        assert first is not None
        secrets += [first[0].access_token, first[0].refresh_token]

        assert not call_tool(http, session_id, 3).get("isError")
        gateway.clock.advance(3 * 3600)  # the next call refreshes
        assert not call_tool(http, session_id, 4).get("isError")
        second = gateway.gateway.store.load_tokens(alice.open_id)
        assert second is not None and second[0].access_token != first[0].access_token
        secrets += [second[0].access_token, second[0].refresh_token]

        admin_token = (gateway.settings.data_dir / "admin.token").read_text().strip()
        signed_in = http.post("/admin/login", data={"token": admin_token})
        assert signed_in.status_code == 303
        secrets += [admin_token, signed_in.cookies["larkgate_admin"]]
        assert http.post("/admin/login", data={"token": "wrong" * 6}).status_code == 401
        bad = http.get(f"/oauth/callback?code=deadbeef{'0' * 24}&state={seen.states[0]}")
        assert bad.status_code == 400
        assert http.delete("/mcp", headers={"Mcp-Session-Id": session_id}).status_code == 204
    sse_session(gateway.url, seen)
    gateway.stop()

    lines = captured.getvalue().splitlines()
    child_logs = [p for p in gateway.settings.data_dir.rglob("*.log*") if p.is_file()]
    child_lines = [line for p in child_logs for line in p.read_text(errors="replace").splitlines()]
    assert len(lines) > 20 and child_lines

    forbidden = [*secrets, *seen.all(), alice.open_id, alice.union_id]
    assert all(len(s) >= 8 for s in forbidden)
    for line in [*lines, *child_lines]:
        for secret in forbidden:
            assert secret not in line, f"a secret reached the log: {line[:200]}"

    records = [json.loads(line) for line in lines]
    assert {"ts", "level", "logger", "msg", "request_id", "user", "instance"} <= records[0].keys()
    alice_key = user_key(alice.open_id)
    in_call = [r for r in records if r["request_id"] and r["user"] == alice_key and r["instance"]]
    assert in_call, "no line carried request id, hashed user and instance together"
    assert any(r["logger"] == "larkgate.feishu.keeper" for r in records)
    assert {r["logger"] for r in records} >= {"larkgate.login", "larkgate.instances.spawner"}
