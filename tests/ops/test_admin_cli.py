"""The admin CLI against a real `larkgate serve`, and what survives its `kill -9`."""

from __future__ import annotations

import calendar
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ops_support import (
    Seen,
    Serve,
    call_tool,
    gateway_env,
    kill_all,
    larkgate,
    logged_in_session,
    wait_until,
)

from larkgate.emulator import RunningEmulator
from larkgate.userkey import user_key
from support import free_port

ADMIN_TOKEN = "cli-admin-token-of-the-test-gateway"


@pytest.fixture
def serve(tmp_path: Path, emulator: RunningEmulator) -> Iterator[Serve]:
    env = gateway_env(
        tmp_path / "data",
        emulator,
        free_port(),
        LARKGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        LARKGATE_MONITOR_INTERVAL="0.5",
        LARKGATE_FEISHU_PROBE_INTERVAL="0",
    )
    process = Serve(env, tmp_path / "serve.log")
    yield process
    process.stop(signal.SIGKILL)
    kill_all(process.children())


def test_admin_cli_lists_shows_stops_ends_and_logs_out_while_serving(
    serve: Serve, emulator: RunningEmulator
) -> None:
    serve.start()
    alice = emulator.state.config.find_user("alice")
    bob = emulator.state.config.find_user("bob")
    assert alice is not None and bob is not None
    alice_key, bob_key = user_key(alice.open_id), user_key(bob.open_id)
    seen = Seen()
    alice_session = logged_in_session(serve.url, "alice", seen)
    bob_session = logged_in_session(serve.url, "bob", seen)
    env = serve.env

    users = larkgate(env, "users", "list").stdout
    assert alice_key in users and bob_key in users and "logged in" in users
    assert alice.open_id not in users
    shown = larkgate(env, "users", "show", alice_key).stdout
    assert alice.open_id in shown and "refresh until" in shown and "sessions      1" in shown

    instances = json.loads(larkgate(env, "instances", "list", "--json").stdout)
    alice_instance = next(i for i in instances if i["user"] == alice_key)
    assert {i["role"] for i in instances} == {"user", "default"}
    stopped = larkgate(env, "instances", "stop", alice_instance["id"]).stdout
    assert f"instance {alice_instance['id']} of user {alice_key} stopped" in stopped
    after = json.loads(larkgate(env, "instances", "list", "--json").stdout)
    assert alice_instance["id"] not in {i["id"] for i in after}
    refused = larkgate(env, "instances", "stop", "nosuchinstance", check=False)
    assert refused.returncode != 0 and "no running instance" in refused.stderr

    # Her next call starts a new instance, logged in as before.
    with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
        assert "Alice" in call_tool(http, alice_session)["content"][0]["text"]

    logs = larkgate(env, "logs", alice.open_id, "-n", "50").stdout
    assert logs.strip(), "alice's lark-mcp log is empty"
    assert larkgate(env, "logs", alice_key, "-n", "50").stdout == logs  # by hash, the same file

    sessions = json.loads(larkgate(env, "sessions", "list", "--user", bob_key, "--json").stdout)
    assert len(sessions) == 1 and sessions[0]["transport"] == "streamable"
    larkgate(env, "sessions", "end", sessions[0]["session"])
    with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
        gone = http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": bob_session,
            },
        )
        assert gone.status_code == 404

    larkgate(env, "users", "logout", bob_key)
    assert "logged out" in larkgate(env, "users", "list").stdout

    # kill -9 and start again: the children it left are stopped, Alice's login and session
    # are still there.
    before = {p.pid for p in serve.children()}
    serve.stop(signal.SIGKILL)
    serve.start()
    assert not before & {p.pid for p in serve.children()}
    with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
        result = call_tool(http, alice_session, 7)
    assert not result.get("isError") and "Alice" in result["content"][0]["text"]

    # Every line the gateway wrote to its non-terminal stderr is JSON.
    lines = serve.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "larkgate.admin.routes" for r in records)
    assert not any(secret in line for line in lines for secret in [*seen.all(), ADMIN_TOKEN])


def _epoch(shown: str) -> int:
    return calendar.timegm(time.strptime(shown, "%Y-%m-%dT%H:%M:%SZ"))


def test_last_use_is_when_each_session_and_user_was_really_used_not_the_last_sweep(
    serve: Serve, emulator: RunningEmulator
) -> None:
    # The sweep that stores last-use times runs every reap interval.
    serve.env["LARKGATE_REAP_INTERVAL"] = "0.3"
    serve.start()
    alice = emulator.state.config.find_user("alice")
    bob = emulator.state.config.find_user("bob")
    assert alice is not None and bob is not None
    alice_key, bob_key = user_key(alice.open_id), user_key(bob.open_id)
    seen = Seen()
    alice_session = logged_in_session(serve.url, "alice", seen)
    logged_in_session(serve.url, "bob", seen)
    bob_gone = time.time()  # Bob's client is never heard from again
    time.sleep(2.5)  # past the CLI's one-second resolution, and many sweeps
    alice_calls = int(time.time())
    with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
        assert not call_tool(http, alice_session, 3).get("isError")

    def users() -> dict[str, int]:
        rows = json.loads(larkgate(serve.env, "users", "list", "--json").stdout)
        return {r["user"]: _epoch(r["last_seen"]) for r in rows}

    # Alice's last use follows her calls, not her login; a database write per call is not
    # needed for it (the sweep brings it).
    last_use = wait_until(
        lambda: (found := users())[alice_key] >= alice_calls and found, what="alice's last use"
    )
    assert last_use[bob_key] <= bob_gone
    sessions = {
        key: json.loads(larkgate(serve.env, "sessions", "list", "--user", key, "--json").stdout)
        for key in (alice_key, bob_key)
    }
    assert _epoch(sessions[alice_key][0]["last_seen"]) >= alice_calls
    # Bob's session keeps the time of its last call: the sweeps since did not make it "now".
    assert _epoch(sessions[bob_key][0]["last_seen"]) <= bob_gone
