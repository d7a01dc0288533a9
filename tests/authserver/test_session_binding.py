"""A session belongs to the user who opened or first logged it in, whatever the route."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
from oauth_person import ACCEPT, CALL, INIT, bearer, obtain_grant, open_session

from larkgate.emulator import RunningEmulator
from support import GatewayServer


def test_a_token_of_one_user_on_another_users_session_is_404(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    alice = obtain_grant(shared_http, shared_gateway.url, "alice")
    bob = obtain_grant(shared_http, shared_gateway.url, "bob")
    alices_session = open_session(shared_http, alice.access_token)
    ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}

    as_bob = {**bearer(bob.access_token), "Mcp-Session-Id": alices_session}
    foreign = shared_http.post("/mcp", json=ping, headers=as_bob)
    assert foreign.status_code == 404
    assert foreign.json()["error"]["data"]["code"] == "unknown_session"
    assert shared_http.delete("/mcp", headers=as_bob).status_code == 404

    as_alice = {**bearer(alice.access_token), "Mcp-Session-Id": alices_session}
    assert shared_http.post("/mcp", json=ping, headers=as_alice).status_code == 200


def test_both_a_header_and_a_key_in_the_url_is_400(shared_http: httpx.Client) -> None:
    response = shared_http.post("/mcp?key=lgk_x", json=INIT, headers=bearer("lga_x"))
    assert response.status_code == 400


def test_an_oauth_token_in_the_url_is_refused(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    grant = obtain_grant(shared_http, shared_gateway.url, "carol")
    response = shared_http.post(f"/mcp?key={grant.access_token}", json=INIT, headers=ACCEPT)
    assert response.status_code == 401


def test_a_session_opened_with_a_header_needs_it_on_every_request(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway()  # login links on /mcp: requests without a credential get in
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        grant = obtain_grant(http, gateway.url, "alice")
        session_id = open_session(http, grant.access_token)
        bare = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    assert bare.status_code == 401
    assert "resource_metadata=" in bare.headers["www-authenticate"]


def test_a_login_link_session_is_bound_by_the_first_credential_it_sees(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway()
    alice = emulator.state.config.find_user("alice")
    assert alice
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        anonymous = http.post("/mcp", json=INIT, headers=ACCEPT)
        session_id = anonymous.headers["mcp-session-id"]
        grant = obtain_grant(http, gateway.url, "alice")
        bob = obtain_grant(http, gateway.url, "bob")
        emulator.state.calls.clear()

        as_alice = {**bearer(grant.access_token), "Mcp-Session-Id": session_id}
        reply = http.post("/mcp", json=CALL, headers=as_alice)
        as_bob = {**bearer(bob.access_token), "Mcp-Session-Id": session_id}
        stolen = http.post("/mcp", json=CALL, headers=as_bob)

    assert reply.status_code == 200 and "Alice" in reply.text
    assert stolen.status_code == 404
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [alice.open_id]


def _events(stream: httpx.Response) -> Iterator[tuple[str, str]]:
    event = ""
    for line in stream.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            yield event, line.removeprefix("data:").strip()


def test_an_sse_session_opened_with_a_token_keeps_to_its_user(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    alice = obtain_grant(shared_http, shared_gateway.url, "alice", f"{shared_gateway.url}/sse")
    bob = obtain_grant(shared_http, shared_gateway.url, "bob", f"{shared_gateway.url}/sse")
    with shared_http.stream("GET", "/sse", headers=bearer(alice.access_token)) as stream:
        events = _events(stream)
        kind, endpoint = next(events)
        assert kind == "endpoint"

        as_bob = shared_http.post(endpoint, json=INIT, headers=bearer(bob.access_token))
        bare = shared_http.post(endpoint, json=INIT)
        as_alice = shared_http.post(endpoint, json=INIT, headers=bearer(alice.access_token))
        kind, data = next(events)

    assert as_bob.status_code == 404
    assert bare.status_code == 401
    assert as_alice.status_code == 202
    assert kind == "message"
    assert "acting as you" in json.loads(data)["result"]["instructions"]


def test_unknown_credentials_are_rate_limited_but_expired_tokens_always_get_their_401(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway(mcp_auth="oauth", auth_rate_limit=2)
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        grant = obtain_grant(http, gateway.url, "alice")
        gateway.clock.advance(gateway.settings.oauth_access_token_ttl + 1)
        expired = [
            http.post("/mcp", json=INIT, headers=bearer(grant.access_token)) for _ in range(6)
        ]
        guesses = [http.post("/mcp", json=INIT, headers=bearer("lga_guess")) for _ in range(6)]
    assert {r.status_code for r in expired} == {401}
    assert 'error_description="the access token expired"' in expired[0].headers["www-authenticate"]
    assert 429 in {r.status_code for r in guesses}
