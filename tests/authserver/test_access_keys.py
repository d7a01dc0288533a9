"""Personal access keys: made after a login, shown once, used as a header or ?key=, revocable."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
from mcp import Client
from mcp.client.sse import sse_client
from oauth_person import (
    ACCESS_KEY,
    CALL,
    CHAT_LIST,
    FORM_TOKEN,
    INIT,
    bearer,
    browser,
    feishu_login,
    obtain_grant,
    open_session,
    origin_of,
)

from larkgate.emulator import RunningEmulator
from support import GatewayServer, login_link_of, press_login_button, tool_text


def _login_by_link(person: httpx.Client, gateway: GatewayServer, user: str) -> httpx.Response:
    """Open an SSE session without a login, then follow its login link as ``user``."""
    with person.stream("GET", f"{gateway.url}/sse") as stream:
        lines = stream.iter_lines()
        next(lines)
        session_id = next(lines).split("sessionId=")[1]
        start = press_login_button(person, login_link_of(gateway, session_id))
        assert start.status_code == 302
        feishu = person.get(f"{start.headers['location']}&emulator_user={user}")
        return person.get(feishu.headers["location"])


def _create_key(person: httpx.Client, gateway: GatewayServer, name: str) -> httpx.Response:
    page = person.get(f"{gateway.url}/keys")
    token = FORM_TOKEN.search(page.text)
    assert token, page.text
    assert page.headers["referrer-policy"] == "same-origin"
    return person.post(
        f"{gateway.url}/keys/create",
        data={"csrf": token.group(1), "name": name},
        headers=origin_of(gateway.url),
    )


def test_a_key_made_after_a_login_link_works_as_header_and_in_the_sse_url(
    oauth_gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice = emulator.state.config.find_user("alice")
    assert alice
    with browser() as person:
        success = _login_by_link(person, oauth_gateway, "alice")
        assert success.status_code == 200
        assert f"{oauth_gateway.url}/keys" in success.text
        created = _create_key(person, oauth_gateway, "laptop")
        found = ACCESS_KEY.search(created.text)
        assert created.status_code == 200 and found, created.text
        key = found.group(0)
        assert created.headers["cache-control"] == "no-store"
        assert ACCESS_KEY.search(person.get(f"{oauth_gateway.url}/keys").text) is None

    emulator.state.calls.clear()
    with httpx.Client(base_url=oauth_gateway.url, timeout=30, trust_env=False) as http:
        session_id = open_session(http, key)
        reply = http.post("/mcp", json=CALL, headers={**bearer(key), "Mcp-Session-Id": session_id})
    assert reply.status_code == 200 and "Alice" in reply.text

    async def over_sse() -> str:
        async with Client(sse_client(f"{oauth_gateway.url}/sse?key={key}"), mode="legacy") as c:
            result = await c.call_tool(CHAT_LIST, {"params": {"page_size": 5}})
            assert not result.is_error, tool_text(result)
            return tool_text(result)

    assert "Alice" in anyio.run(over_sse)
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [alice.open_id, alice.open_id]


def test_keys_are_listed_with_their_last_use_and_a_revoked_key_stops_working(
    oauth_gateway: GatewayServer,
) -> None:
    with browser() as person:
        _login_by_link(person, oauth_gateway, "bob")
        key = ACCESS_KEY.search(_create_key(person, oauth_gateway, "ci job").text)
        assert key
        page = person.get(f"{oauth_gateway.url}/keys").text
        assert "ci job" in page and "never" in page

        with httpx.Client(base_url=oauth_gateway.url, timeout=30, trust_env=False) as http:
            assert http.post("/mcp", json=INIT, headers=bearer(key.group(0))).status_code == 200
            page = person.get(f"{oauth_gateway.url}/keys").text
            assert "never" not in page.split("ci job")[1].split("</tr>")[0]

            key_id = key.group(0).split("_")[1]
            token = FORM_TOKEN.search(page)
            assert token
            revoked = person.post(
                f"{oauth_gateway.url}/keys/revoke",
                data={"csrf": token.group(1), "key_id": key_id},
                headers=origin_of(oauth_gateway.url),
            )
            assert revoked.status_code == 303
            assert http.post("/mcp", json=INIT, headers=bearer(key.group(0))).status_code == 401
        assert "ci job" not in person.get(f"{oauth_gateway.url}/keys").text


def test_key_forms_need_the_page_token_the_origin_and_the_login(
    oauth_gateway: GatewayServer,
) -> None:
    create = f"{oauth_gateway.url}/keys/create"
    with browser() as person:
        _login_by_link(person, oauth_gateway, "carol")
        token = FORM_TOKEN.search(person.get(f"{oauth_gateway.url}/keys").text)
        assert token
        no_token = person.post(create, data={"name": "x"})
        wrong_token = person.post(create, data={"name": "x", "csrf": "0" * 64})
        cross_site = person.post(
            create,
            data={"name": "x", "csrf": token.group(1)},
            headers={"Origin": "https://evil.example"},
        )
    with browser() as stranger:
        no_login = stranger.post(create, data={"name": "x", "csrf": token.group(1)})
    for refused in (no_token, wrong_token, cross_site, no_login):
        assert refused.status_code == 403
        assert ACCESS_KEY.search(refused.text) is None


def test_the_key_page_has_its_own_feishu_login(oauth_gateway: GatewayServer) -> None:
    with browser() as person:
        intro = person.get(f"{oauth_gateway.url}/keys")
        assert intro.status_code == 200 and "/keys/login" in intro.text
        start = person.get(f"{oauth_gateway.url}/keys/login")
        assert start.status_code == 302
        landing = feishu_login(person, start.headers["location"], "bob")
        assert landing == f"{oauth_gateway.url}/keys"
        page = person.get(landing)
    assert "Logged in as <strong>Bob</strong>" in page.text


def test_a_key_page_login_finished_in_another_browser_logs_nobody_in(
    oauth_gateway: GatewayServer,
) -> None:
    with browser() as attacker:
        start = attacker.get(f"{oauth_gateway.url}/keys/login")
    with browser() as victim:
        feishu = victim.get(f"{start.headers['location']}&emulator_user=alice")
        landing = victim.get(feishu.headers["location"])
        assert landing.status_code == 403 and "other_browser" in landing.text
        assert "/keys/login" in victim.get(f"{oauth_gateway.url}/keys").text


def test_apps_the_user_allowed_are_listed_and_can_be_disconnected(
    oauth_gateway: GatewayServer,
) -> None:
    with httpx.Client(base_url=oauth_gateway.url, timeout=30, trust_env=False) as http:
        grant = obtain_grant(http, oauth_gateway.url, "alice")
        with browser() as person:
            _login_by_link(person, oauth_gateway, "alice")
            page = person.get(f"{oauth_gateway.url}/keys").text
            assert "Test App" in page
            grant_id = page.split('name="grant_id" value="')[1].split('"')[0]
            token = FORM_TOKEN.search(page)
            assert token
            person.post(
                f"{oauth_gateway.url}/keys/disconnect",
                data={"csrf": token.group(1), "grant_id": grant_id},
                headers=origin_of(oauth_gateway.url),
            )
            assert "Test App" not in person.get(f"{oauth_gateway.url}/keys").text
        assert http.post("/mcp", json=INIT, headers=bearer(grant.access_token)).status_code == 401


def test_a_user_holds_at_most_the_configured_number_of_keys(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway(max_access_keys=1)
    with browser() as person:
        _login_by_link(person, gateway, "alice")
        first = _create_key(person, gateway, "one")
        second = _create_key(person, gateway, "two")
    assert ACCESS_KEY.search(first.text)
    assert ACCESS_KEY.search(second.text) is None
    assert "revoke one first" in second.text
