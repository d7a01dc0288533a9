"""The login's redirect_uri, state and PKCE, and login links that ask for extra scopes."""

from __future__ import annotations

import stat
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from tokenbench import Bench

from larkgate.loginlinks import secret_path
from larkgate.store import digest

pytestmark = pytest.mark.anyio

PUBLIC = "https://gate.example.com"


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_redirect_uri_comes_from_the_public_url_behind_a_proxy(
    make_bench: Callable[..., Bench],
) -> None:
    # Listening on loopback, published by a proxy as https://gate.example.com.
    bench = make_bench(public_url=PUBLIC + "/")
    start = await bench.start_login(bench.new_session("s1"))
    sent = query_of(start.headers["location"])["redirect_uri"]

    callback = await bench.feishu_consents(start.headers["location"], "alice")
    page = await bench.callback(callback)

    assert sent == f"{PUBLIC}/oauth/callback" == bench.gateway.settings.redirect_uri
    assert callback.startswith(f"{PUBLIC}/oauth/callback?")
    # The emulator compares the token call's redirect_uri byte for byte with the authorize one.
    assert page.status_code == 200, page.text


async def test_a_redirect_uri_mismatch_names_the_setting_to_fix(
    make_bench: Callable[..., Bench],
) -> None:
    before = make_bench(public_url="https://old.example.com")
    start = await before.start_login(before.new_session("s1"))
    callback = await before.feishu_consents(start.headers["location"], "alice")
    # The operator changed the public URL between the two calls.
    after = make_bench(public_url=PUBLIC, clock=before.gateway.clock)

    page = await after.callback(callback)

    assert page.status_code == 502
    assert "LARKGATE_PUBLIC_URL" in page.text and f"{PUBLIC}/oauth/callback" in page.text
    assert "redirect_uri_mismatch" in page.text


async def test_two_logins_of_one_session_each_complete_once_and_the_first_user_keeps_it(
    bench: Bench,
) -> None:
    session = bench.new_session("s1")
    first = await bench.start_login(session)
    bench.advance(1)
    second = await bench.start_login(session)
    first_state = query_of(first.headers["location"])["state"]
    second_state = query_of(second.headers["location"])["state"]
    assert first_state != second_state
    assert (
        query_of(first.headers["location"])["code_challenge"]
        != query_of(second.headers["location"])["code_challenge"]
    )

    done_second = await bench.callback(
        await bench.feishu_consents(second.headers["location"], "bob")
    )
    done_first = await bench.callback(
        await bench.feishu_consents(first.headers["location"], "alice")
    )

    # The later completion, by someone else, cannot take the session the first one bound.
    assert done_second.status_code == 200
    assert done_first.status_code == 409 and "session_other_user" in done_first.text
    bob = bench.emulator.state.config.find_user("bob").open_id
    assert bench.store.get_session(session).user_id == bob
    assert [u.name for u in bench.store.list_users()] == ["Bob"]


async def test_a_replayed_callback_is_refused_and_changes_nothing(bench: Bench) -> None:
    alice = await bench.login("alice", session_id="s0")
    start = await bench.start_login(bench.new_session("s1"))
    callback = await bench.feishu_consents(start.headers["location"], "alice")
    assert (await bench.callback(callback)).status_code == 200
    row = bench.store.raw_user_row(alice)

    replay = await bench.callback(callback)

    assert replay.status_code == 400
    assert "already used, has expired, or did not come from this gateway" in replay.text
    assert "login_state_invalid" in replay.text
    assert bench.store.raw_user_row(alice) == row


async def test_a_forged_state_is_refused_and_the_code_is_not_spent(bench: Bench) -> None:
    start = await bench.start_login(bench.new_session("s1"))
    callback = await bench.feishu_consents(start.headers["location"], "alice")
    query = query_of(callback)
    exchanges_before = len(bench.emulator.state.calls)

    forged = await bench.web.get(
        "/oauth/callback", params={"code": query["code"], "state": "forged-" + query["state"]}
    )

    assert forged.status_code == 400 and "login_state_invalid" in forged.text
    assert len(bench.emulator.state.calls) == exchanges_before  # Feishu was never asked
    assert bench.store.list_users() == []
    assert (await bench.callback(callback)).status_code == 200  # the real one still works


async def test_a_login_started_before_a_restart_completes_after_it(
    make_bench: Callable[..., Bench],
) -> None:
    before = make_bench()
    start = await before.start_login(before.new_session("s1"))
    callback = await before.feishu_consents(start.headers["location"], "alice")
    await before.close()

    after = make_bench(public_url=before.gateway.settings.public_url, clock=before.gateway.clock)
    page = await after.callback(callback)

    assert page.status_code == 200
    alice = after.emulator.state.config.find_user("alice").open_id
    assert after.store.get_session("s1").user_id == alice


async def test_a_login_link_shown_before_a_restart_opens_after_it_by_a_private_secret(
    make_bench: Callable[..., Bench],
) -> None:
    before = make_bench()
    session = before.new_session("a-session-id-its-link-never-carries")
    link = before.gateway.router.login_link(session)
    await before.close()

    after = make_bench(public_url=before.gateway.settings.public_url, clock=before.gateway.clock)
    page = await after.web.get(link)

    assert page.status_code == 200 and "Continue to the Feishu login" in page.text
    assert after.gateway.router.login_link(session) == link
    assert session not in link
    secret = secret_path(after.gateway.settings)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


async def test_a_login_state_expires(bench: Bench) -> None:
    start = await bench.start_login(bench.new_session("s1"))
    callback = await bench.feishu_consents(start.headers["location"], "alice")
    bench.advance(bench.gateway.settings.login_state_ttl + 1)

    page = await bench.callback(callback)

    assert page.status_code == 400 and "login_state_invalid" in page.text
    assert bench.store.list_users() == []


async def test_a_state_is_bound_to_its_verifier_and_session_and_taken_once(bench: Bench) -> None:
    store = bench.store
    for name in ("a", "b"):
        store.put_login_state(
            f"state-{name}", digest(f"session-{name}"), f"verifier-{name}", 200.0, now=100.0
        )

    assert store.take_login_state("state-b", now=150.0) == (digest("session-b"), "verifier-b")
    assert store.take_login_state("state-b", now=150.0) is None
    assert store.take_login_state("state-a", now=200.0) is None  # expired, and now gone too
    assert store.take_login_state("state-a", now=150.0) is None


async def test_a_login_link_can_ask_for_the_scopes_a_tool_was_missing(bench: Bench) -> None:
    start = await bench.start_login(bench.new_session("s1"), scope="im:message docx:document")

    scope = query_of(start.headers["location"])["scope"].split(" ")

    assert scope == ["im:message", "docx:document", "offline_access"]


@pytest.mark.parametrize("bad", ["im:chat <script>", "a" * 200, "x&y", " ".join(["s"] * 40)])
async def test_a_login_link_with_malformed_scopes_is_refused(bench: Bench, bad: str) -> None:
    page = await bench.start_login(bench.new_session("s1"), scope=bad)

    assert page.status_code == 400 and "login_scope_invalid" in page.text
    assert "<script>" not in page.text
