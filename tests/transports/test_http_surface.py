"""What each transport answers to well-formed and bad requests, byte by byte over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from larkgate.emulator import RunningEmulator
from support import GatewayServer, login_link_in, play_browser_login, press_login_button

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "im_v1_chat_list", "arguments": {"params": {"page_size": 5}}},
}


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        yield client


def _session(http: httpx.Client) -> tuple[str, dict[str, object]]:
    response = http.post("/mcp", json=INIT, headers=ACCEPT)
    assert response.status_code == 200
    return response.headers["mcp-session-id"], response.json()


def test_initialize_mints_a_session_and_offers_the_login_link(http: httpx.Client) -> None:
    session_id, reply = _session(http)
    assert len(session_id) >= 32
    result = reply["result"]
    assert isinstance(result, dict)
    assert result["protocolVersion"] == "2025-06-18"
    link = login_link_in(result["instructions"])
    assert link.startswith(f"{http.base_url.join('/oauth/start')}?login=")
    # The link travels (history, chats, proxy logs): it must not carry the session's credential.
    assert session_id not in result["instructions"]


def test_wrong_accept_is_406(http: httpx.Client) -> None:
    response = http.post("/mcp", json=INIT, headers={"Accept": "application/json"})
    assert response.status_code == 406
    assert response.json()["error"]["data"]["code"] == "bad_accept"


def test_foreign_origin_is_403_and_loopback_origin_passes(http: httpx.Client) -> None:
    evil = http.post("/mcp", json=INIT, headers={**ACCEPT, "Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert evil.json()["error"]["data"]["code"] == "bad_origin"
    assert http.get("/sse", headers={"Origin": "https://evil.example"}).status_code == 403
    local = http.post("/mcp", json=INIT, headers={**ACCEPT, "Origin": "http://localhost:6274"})
    assert local.status_code == 200


def test_unknown_session_is_404_and_missing_session_is_400(http: httpx.Client) -> None:
    unknown = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["data"]["code"] == "unknown_session"
    missing = http.post("/mcp", json=CALL, headers=ACCEPT)
    assert missing.status_code == 400
    assert missing.json()["error"]["data"]["code"] == "session_required"


def test_server_discover_probe_gets_a_plain_jsonrpc_error_to_fall_back_on(
    http: httpx.Client,
) -> None:
    probe = {"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}}
    response = http.post("/mcp", json=probe, headers=ACCEPT)
    assert response.status_code == 400
    body = response.json()
    assert body["id"] == 0 and body["error"]["code"] == -32601


def test_unsupported_protocol_version_is_400(http: httpx.Client) -> None:
    session_id, _ = _session(http)
    response = http.post(
        "/mcp",
        json=CALL,
        headers={**ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "1999-01-01"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["data"]["code"] == "bad_protocol_version"


def test_malformed_json_is_400_parse_error_and_the_session_still_works(
    http: httpx.Client,
) -> None:
    session_id, _ = _session(http)
    headers = {**ACCEPT, "Mcp-Session-Id": session_id}
    bad = http.post("/mcp", content=b'{"jsonrpc": "2.0", "id": 3, "method":', headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == -32700
    listed = http.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=headers
    )
    assert listed.status_code == 200 and listed.json()["result"]["tools"]


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    session_id, _ = _session(http)
    huge = json.dumps({**CALL, "params": {"name": "x", "arguments": {"pad": "a" * 200_000}}})
    response = http.post(
        "/mcp", content=huge.encode(), headers={**ACCEPT, "Mcp-Session-Id": session_id}
    )
    assert response.status_code == 413
    assert response.json()["error"]["data"]["code"] == "body_too_large"
    sse_bad = http.post("/messages?sessionId=whatever", content=huge.encode())
    assert sse_bad.status_code in (404, 413)


def test_get_is_405_and_delete_ends_the_session(http: httpx.Client) -> None:
    session_id, _ = _session(http)
    headers = {**ACCEPT, "Mcp-Session-Id": session_id}
    assert http.get("/mcp", headers=headers).status_code == 405
    assert http.delete("/mcp", headers=headers).status_code == 204
    assert http.post("/mcp", json=CALL, headers=headers).status_code == 404
    assert http.delete("/mcp", headers=headers).status_code == 404


def test_notifications_are_accepted_with_202(http: httpx.Client) -> None:
    session_id, _ = _session(http)
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = http.post("/mcp", json=note, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    assert response.status_code == 202


def test_sse_messages_to_an_unknown_session_are_404(http: httpx.Client) -> None:
    response = http.post("/messages?sessionId=does-not-exist", json=CALL)
    assert response.status_code == 404
    assert http.post("/messages", json=CALL).status_code == 400


def test_one_users_session_id_is_useless_to_another_transport(http: httpx.Client) -> None:
    session_id, _ = _session(http)
    response = http.post(f"/messages?sessionId={session_id}", json=CALL)
    assert response.status_code == 404


def test_forged_and_replayed_login_state_are_refused_and_change_nothing(
    http: httpx.Client, gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    _, reply = _session(http)
    link = login_link_in(reply["result"]["instructions"])  # type: ignore[index]

    forged = http.get("/oauth/callback", params={"code": "x", "state": "forged"})
    assert forged.status_code == 400 and "login_state_invalid" in forged.text

    with httpx.Client(timeout=30, trust_env=False) as browser:
        authorize = press_login_button(browser, link).headers["location"]
        back = browser.get(f"{authorize}&emulator_user=alice").headers["location"]
        first = browser.get(back)
        replay = browser.get(back)
    assert first.status_code == 200
    assert replay.status_code == 400 and "login_state_invalid" in replay.text

    users = gateway.gateway.store.list_users()
    assert [u.name for u in users] == ["Alice"]


def test_callback_with_an_error_parameter_logs_nobody_in(
    http: httpx.Client, gateway: GatewayServer
) -> None:
    _, reply = _session(http)
    page = play_browser_login(
        login_link_in(reply["result"]["instructions"]),  # type: ignore[index]
        "alice",
        deny=True,
    )
    assert page.status_code == 400 and "login_cancelled" in page.text
    assert gateway.gateway.store.list_users() == []


def test_a_made_up_login_handle_or_a_session_id_in_its_place_is_refused(
    http: httpx.Client,
) -> None:
    session_id, _ = _session(http)
    for query in ({"login": "made-up"}, {"login": session_id}, {"sessionId": session_id}):
        response = http.get("/oauth/start", params=query)
        assert response.status_code == 404 and "unknown_session" in response.text, query
    # A link of the earlier form (it carried the session id) says how to get a new one.
    assert "Call the tool again" in response.text


def test_tools_and_health_answer_without_user_data(
    http: httpx.Client, gateway: GatewayServer
) -> None:
    _, reply = _session(http)
    play_browser_login(login_link_in(reply["result"]["instructions"]), "alice")  # type: ignore[index]
    tools = http.get("/tools").json()["tools"]
    assert "im_v1_chat_list" in {t["name"] for t in tools}
    health = http.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["default_instance"] == "ready"
    assert "ou_" not in health.text and "Alice" not in health.text


def test_sse_stream_names_its_endpoint_then_keeps_alive(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway(keepalive_interval=0.2)
    seen: list[str] = []
    with (
        httpx.Client(timeout=30, trust_env=False) as http,
        http.stream("GET", f"{gateway.url}/sse") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            seen.append(line)
            if line.startswith(": keepalive"):
                break
    assert seen[0] == "event: endpoint"
    assert seen[1].startswith("data: /messages?sessionId=")
