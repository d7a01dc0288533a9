"""The login link's confirmation page: it names the client and warns, and only its own button,
pressed in the browser that opened it, goes on to Feishu.

A login link binds whoever finishes it to the link's MCP session, so a link sent to a colleague
would let the sender act as them. These tests run the real gateway and the Feishu emulator on
loopback, and play the browser over HTTP (and once in real Chromium).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.types import Implementation

from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from larkgate.store import digest
from support import (
    LARK_MCP_CLI,
    GatewayServer,
    chromium,
    confirmation_form,
    gateway_settings,
    login_link_in,
    play_browser_login,
    tool_text,
)

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CHAT_LIST = "im_v1_chat_list"
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": CHAT_LIST, "arguments": {"params": {"page_size": 5}}},
}
FOREIGN = {"Origin": "https://evil.example"}
# Alice, Bob and Carol are shared by the tests below; the others each belong to one test.
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")


def initialize(client_info: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"protocolVersion": "2025-06-18", "capabilities": {}}
    if client_info is not None:
        params["clientInfo"] = client_info
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


@dataclass
class Stack:
    gateway: GatewayServer
    emulator: RunningEmulator

    @property
    def url(self) -> str:
        return self.gateway.url

    def open_session(self, client_info: dict[str, Any] | None = None) -> tuple[str, str]:
        """(session id, login link) of a new Streamable HTTP session."""
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as http:
            answer = http.post("/mcp", json=initialize(client_info), headers=ACCEPT)
        assert answer.status_code == 200, answer.text
        return answer.headers["mcp-session-id"], login_link_in(
            answer.json()["result"]["instructions"]
        )

    def login_states_of(self, session_id: str) -> int:
        """Logins under way for a session, read straight from the store's file."""
        path = self.gateway.gateway.store.path
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM login_states WHERE session_digest = ?", (digest(session_id),)
            ).fetchone()
        return int(row[0])

    def bound_user(self, session_id: str) -> str | None:
        record = self.gateway.gateway.store.get_session(session_id)
        assert record is not None
        return record.user_id

    def open_id(self, login: str) -> str:
        person = self.emulator.state.config.find_user(login)
        assert person is not None
        return person.open_id

    def call_tool(self, session_id: str) -> str:
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            answer = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
        assert answer.status_code == 200, answer.text
        return "\n".join(c["text"] for c in answer.json()["result"]["content"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway for the module: every test opens sessions of its own."""
    if not LARK_MCP_CLI.is_file():
        pytest.fail("lark-mcp is not installed: run `npm ci --ignore-scripts`")
    data_dir: Path = tmp_path_factory.mktemp("login-link")
    with (
        RunningEmulator(EmulatorConfig(users=[make_user(login) for login in PEOPLE])) as emulator,
        GatewayServer(gateway_settings(data_dir, emulator)) as gateway,
    ):
        yield Stack(gateway, emulator)


def browser() -> httpx.Client:
    return httpx.Client(timeout=30, trust_env=False)


def origin(stack: Stack) -> dict[str, str]:
    return {"Origin": stack.url}


# -- the page --------------------------------------------------------------------------------


def test_the_login_page_names_the_client_and_the_transport_and_warns(stack: Stack) -> None:
    session_id, link = stack.open_session({"name": "Claude Code <b>x</b>", "version": "1.0.42"})
    with browser() as person:
        page = person.get(link)

    assert page.status_code == 200
    assert "Claude Code &lt;b&gt;x&lt;/b&gt; 1.0.42" in page.text
    assert "<b>x</b>" not in page.text
    assert "the name it gave itself; LarkGate cannot check it" in page.text
    assert "Streamable HTTP (/mcp)" in page.text and "session opened" in page.text
    assert "Continue only if you yourself just asked your AI client to connect" in page.text
    assert "If someone sent you this link, close this page" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    action, fields = confirmation_form(page)
    assert action == f"{stack.url}/oauth/start" and fields["login"] in link
    assert fields["confirm"] not in link
    assert session_id not in page.text


def test_a_client_name_is_cut_short_and_loses_hidden_characters(stack: Stack) -> None:
    sneaky = "Claude\u202e\n" + "A" * 500
    _, link = stack.open_session({"name": sneaky, "version": "9" * 100})
    _, nameless_link = stack.open_session()
    with browser() as person:
        page = person.get(link).text
        nameless = person.get(nameless_link).text

    assert "\u202e" not in page and "A" * 61 not in page and "Claude " + "A" * 53 in page
    assert "9" * 31 not in page and "9" * 30 in page
    assert "Client: one that did not give its name" in nameless


@pytest.mark.anyio
async def test_the_login_page_of_an_sse_session_names_its_transport_and_client(
    stack: Stack,
) -> None:
    named = Implementation(name="Cherry Studio", version="1.5.0")
    async with Client(sse_client(f"{stack.url}/sse"), mode="legacy", client_info=named) as client:
        link = login_link_in(client.instructions)
        async with httpx.AsyncClient(timeout=30, trust_env=False) as person:
            page = await person.get(link)

    assert page.status_code == 200
    assert "Cherry Studio 1.5.0" in page.text and "HTTP+SSE (/sse)" in page.text


# -- opening the link is not logging in ---------------------------------------------------------


def test_opening_the_link_changes_nothing_and_reaches_no_feishu_endpoint(stack: Stack) -> None:
    session_id, link = stack.open_session({"name": "raw", "version": "1"})
    before = len(stack.emulator.state.calls)
    with httpx.Client(timeout=30, trust_env=False, follow_redirects=True) as person:
        pages = [person.get(link) for _ in range(3)]

    assert [(p.status_code, str(p.url)) for p in pages] == [(200, link)] * 3
    assert len(stack.emulator.state.calls) == before
    assert stack.login_states_of(session_id) == 0
    assert stack.bound_user(session_id) is None
    assert "login_required" in stack.call_tool(session_id)


def test_pressing_the_button_logs_in_end_to_end(stack: Stack) -> None:
    session_id, link = stack.open_session({"name": "raw", "version": "1"})
    alice = stack.emulator.state.config.find_user("alice")
    assert alice is not None

    done = play_browser_login(link, "alice")

    assert done.status_code == 200 and "Login succeeded" in done.text
    assert stack.bound_user(session_id) == alice.open_id
    assert "Alice" in stack.call_tool(session_id)


def test_a_link_asking_for_more_scopes_shows_them_and_asks_feishu_for_them(stack: Stack) -> None:
    _, link = stack.open_session()
    with browser() as person:
        page = person.get(f"{link}&scope=im:message+docx:document")
        assert "<code>im:message docx:document</code>" in page.text
        action, fields = confirmation_form(page)
        # The scopes are the page's, not the form's: a post cannot change them.
        pressed = person.post(
            action, data={**fields, "scope": "contact:user"}, headers=origin(stack)
        )

    assert pressed.status_code == 302, pressed.text
    asked = httpx.URL(pressed.headers["location"]).params["scope"].split(" ")
    assert asked == ["im:message", "docx:document", "offline_access"]


# -- the link is not the session's credential ------------------------------------------------


def test_the_session_id_is_in_neither_the_link_nor_anything_the_browser_is_sent(
    stack: Stack,
) -> None:
    session_id, link = stack.open_session({"name": "raw", "version": "1"})
    with browser() as person:
        page = person.get(link)
        action, fields = confirmation_form(page)
        pressed = person.post(action, data=fields, headers=origin(stack))
        feishu = person.get(f"{pressed.headers['location']}&emulator_user=bob")
        done = person.get(feishu.headers["location"])

    assert done.status_code == 200 and "Login succeeded" in done.text
    assert session_id not in link
    sent = [answer.text for answer in (page, pressed, done)]
    sent += [f"{k}: {v}" for answer in (page, pressed, done) for k, v in answer.headers.items()]
    assert [text for text in sent if session_id in text] == []


@pytest.mark.anyio
async def test_knowing_only_a_login_link_gives_no_way_to_call_tools_as_its_user(
    stack: Stack,
) -> None:
    mcp_session, mcp_link = stack.open_session({"name": "raw", "version": "1"})
    assert play_browser_login(mcp_link, "dave").status_code == 200
    async with Client(sse_client(f"{stack.url}/sse"), mode="legacy") as dave_on_sse:
        sse_link = login_link_in(dave_on_sse.instructions)
        assert play_browser_login(sse_link, "dave").status_code == 200

        # Someone who saw the links (history, a chat, a proxy log) tries them as session ids.
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=stack.url, timeout=30, trust_env=False) as other:
            for link in (mcp_link, sse_link):
                url = httpx.URL(link)
                for guess in (url.params["login"], url.query.decode(), link):
                    headers = {**ACCEPT, "Mcp-Session-Id": guess}
                    answers.append(await other.post("/mcp", json=CALL, headers=headers))
                    params = {"sessionId": guess}
                    answers.append(await other.post("/messages", params=params, json=CALL))

        assert [(a.status_code, a.json()["error"]["data"]["code"]) for a in answers] == [
            (404, "unknown_session")
        ] * len(answers)
        assert not [a for a in answers if "Dave" in a.text]
        # Dave's own clients still act as Dave.
        on_sse = await dave_on_sse.call_tool(CHAT_LIST, {"params": {"page_size": 5}})
        assert "Dave" in tool_text(on_sse)
    assert "Dave" in stack.call_tool(mcp_session)


# -- a used link ----------------------------------------------------------------------------


def test_a_used_login_link_opened_by_someone_else_cannot_take_the_session_over(
    stack: Stack,
) -> None:
    session_id, link = stack.open_session({"name": "raw", "version": "1"})
    assert play_browser_login(link, "erin").status_code == 200
    store = stack.gateway.gateway.store
    carol_before = store.raw_user_row(stack.open_id("carol"))
    refused_before = stack.gateway.gateway.login.outcomes["refused"]

    with browser() as other:
        page = other.get(link)
        assert "This session is already logged in to Feishu" in page.text
        assert "Erin" not in page.text  # the page does not tell a stranger whose session it is
        action, fields = confirmation_form(page)
        pressed = other.post(action, data=fields, headers=origin(stack))
        feishu = other.get(f"{pressed.headers['location']}&emulator_user=carol")
        refused = other.get(feishu.headers["location"])

    assert refused.status_code == 409
    assert "Error code: <code>session_other_user</code>" in refused.text
    assert stack.gateway.gateway.login.outcomes["refused"] == refused_before + 1
    assert stack.bound_user(session_id) == stack.open_id("erin")
    assert "Erin" in stack.call_tool(session_id)
    assert store.raw_user_row(stack.open_id("carol")) == carol_before


def test_the_same_person_logs_in_again_through_a_used_link_when_feishu_refused_them(
    stack: Stack,
) -> None:
    session_id, link = stack.open_session({"name": "raw", "version": "1"})
    assert play_browser_login(link, "frank").status_code == 200
    assert "Frank" in stack.call_tool(session_id)
    stack.emulator.state.grants.revoke_user(stack.open_id("frank"))
    asked = stack.call_tool(session_id)
    assert "login_required" in asked and login_link_in(asked) == link

    again = play_browser_login(link, "frank")

    assert again.status_code == 200 and "Login succeeded" in again.text
    assert stack.bound_user(session_id) == stack.open_id("frank")
    assert "Frank" in stack.call_tool(session_id)


# -- forged and crossed posts ------------------------------------------------------------------


def _no_token(fields: dict[str, str]) -> dict[str, str]:
    return {"login": fields["login"]}


def _wrong_token(fields: dict[str, str]) -> dict[str, str]:
    return {**fields, "confirm": fields["confirm"][:-2] + "xx"}


@pytest.mark.parametrize(
    ("forgery", "status", "code"),
    [
        ("no token", 400, "form_expired"),
        ("a wrong token", 400, "form_expired"),
        ("another site's page", 403, "bad_origin"),
        ("another browser", 403, "other_browser"),
        ("not a form", 400, "form_expired"),
    ],
)
def test_a_forged_press_is_refused_with_a_stable_code_and_changes_nothing(
    stack: Stack, forgery: str, status: int, code: str
) -> None:
    session_id, link = stack.open_session()
    with browser() as person:
        action, fields = confirmation_form(person.get(link))
        before = len(stack.emulator.state.calls)
        if forgery == "no token":
            refused = person.post(action, data=_no_token(fields), headers=origin(stack))
        elif forgery == "a wrong token":
            refused = person.post(action, data=_wrong_token(fields), headers=origin(stack))
        elif forgery == "another site's page":
            refused = person.post(action, data=fields, headers=FOREIGN)
        elif forgery == "another browser":
            with browser() as stranger:
                refused = stranger.post(action, data=fields, headers=origin(stack))
        else:
            refused = person.post(action, json=fields, headers=origin(stack))

        assert (refused.status_code, "location" in refused.headers) == (status, False)
        assert f"Error code: <code>{code}</code>" in refused.text
        assert refused.headers["cache-control"] == "no-store"
        assert len(stack.emulator.state.calls) == before
        assert stack.login_states_of(session_id) == 0
        assert stack.bound_user(session_id) is None
        # The page's own button still works: the forgery used nothing up.
        genuine = person.post(action, data=fields, headers=origin(stack))
    assert genuine.status_code == 302
    assert "/open-apis/authen/v1/authorize?" in genuine.headers["location"]


def test_one_pages_token_cannot_continue_another_sessions_login(stack: Stack) -> None:
    mallory_session, mallory_link = stack.open_session({"name": "mallory", "version": "1"})
    own_session, own_link = stack.open_session({"name": "raw", "version": "1"})
    bob = stack.emulator.state.config.find_user("bob")
    assert bob is not None
    with browser() as person:
        _, mallory_fields = confirmation_form(person.get(mallory_link))
        action, own_fields = confirmation_form(person.get(own_link))
        crossed = person.post(
            action,
            data={"login": own_fields["login"], "confirm": mallory_fields["confirm"]},
            headers=origin(stack),
        )
        assert crossed.status_code == 403 and "form_expired" in crossed.text
        assert stack.login_states_of(own_session) == 0
        assert stack.login_states_of(mallory_session) == 0

        pressed = person.post(action, data=own_fields, headers=origin(stack))
        again = person.post(action, data=own_fields, headers=origin(stack))
        assert pressed.status_code == 302
        assert again.status_code == 400 and "form_expired" in again.text  # single use
        feishu = person.get(f"{pressed.headers['location']}&emulator_user=bob")
        done = person.get(feishu.headers["location"])

    assert done.status_code == 200
    assert stack.bound_user(own_session) == bob.open_id
    assert stack.bound_user(mallory_session) is None


def test_a_page_left_open_too_long_is_refused(stack: Stack) -> None:
    session_id, link = stack.open_session()
    with browser() as person:
        action, fields = confirmation_form(person.get(link))
        clock = stack.gateway.clock
        clock.advance(stack.gateway.settings.login_state_ttl + 1)
        try:
            late = person.post(action, data=fields, headers=origin(stack))
        finally:
            clock.advance(-(stack.gateway.settings.login_state_ttl + 1))
    assert late.status_code == 400 and "form_expired" in late.text
    assert stack.login_states_of(session_id) == 0


def test_unknown_and_ended_sessions_keep_their_404(stack: Stack) -> None:
    session_id, link = stack.open_session()
    with browser() as person:
        unknown = person.get(f"{stack.url}/oauth/start", params={"login": "made-up"})
        action, fields = confirmation_form(person.get(link))
        with httpx.Client(base_url=stack.url, timeout=30, trust_env=False) as http:
            assert http.delete("/mcp", headers={"Mcp-Session-Id": session_id}).status_code == 204
        ended = person.post(action, data=fields, headers=origin(stack))
        reopened = person.get(link)
    for refused in (unknown, ended, reopened):
        assert refused.status_code == 404 and "unknown_session" in refused.text


# -- a real browser ----------------------------------------------------------------------------


def test_a_person_in_chromium_reads_the_page_presses_the_button_and_logs_in(
    stack: Stack,
) -> None:
    session_id, link = stack.open_session({"name": "Claude Desktop", "version": "0.9"})
    carol = stack.emulator.state.config.find_user("carol")
    assert carol is not None
    with chromium() as launched:
        page = launched.new_page()
        page.goto(link)
        assert "Claude Desktop 0.9" in page.content()
        assert stack.bound_user(session_id) is None
        page.click("button[type=submit]")
        page.click(f'a[href*="emulator_user={carol.open_id}"]')
        assert "Login succeeded" in page.content()

    assert stack.bound_user(session_id) == carol.open_id
    assert "Carol" in stack.call_tool(session_id)
