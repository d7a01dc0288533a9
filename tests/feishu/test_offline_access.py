"""No offline_access: always asked for once, decided by the refresh token's presence, never an
empty one stored, and the user told plainly when the login ends."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from tokenbench import Bench

from larkgate.feishu.keeper import NeedsLogin

pytestmark = pytest.mark.anyio

ACCESS_TTL = 7200


@pytest.mark.parametrize(
    "configured",
    [[], ["im:chat"], ["offline_access", "im:chat", "offline_access"], ["im:chat", "im:chat"]],
)
async def test_offline_access_is_asked_for_exactly_once(
    make_bench: Callable[..., Bench], configured: list[str]
) -> None:
    bench = make_bench(scopes=configured)
    start = await bench.start_login(bench.new_session("s1"))

    scope = parse_qs(urlsplit(start.headers["location"]).query)["scope"][0].split(" ")

    assert scope.count("offline_access") == 1
    assert scope.count("im:chat") == (1 if "im:chat" in configured else 0)


async def test_a_login_without_offline_access_says_when_it_ends_and_then_asks_again(
    bench: Bench,
) -> None:
    bench.emulator.state.config.grant_offline_access = False
    session = bench.new_session("s1")
    start = await bench.start_login(session)
    page = await bench.callback(await bench.feishu_consents(start.headers["location"], "alice"))
    alice = bench.emulator.state.config.find_user("alice").open_id

    assert page.status_code == 200
    assert "cannot be renewed and stops working at" in page.text
    stored = bench.stored(alice)
    assert stored.refresh_token == "" and stored.refresh_expires_at == 0.0
    assert bench.store.users_to_renew(bench.gateway.clock.now() + 10 * 86400) == []

    bench.advance(ACCESS_TTL - 100)  # inside the margin, still valid: keep using it
    assert await bench.keeper.access_token(alice) == stored.access_token
    bench.advance(101)
    with pytest.raises(NeedsLogin, match="did not grant offline access"):
        await bench.keeper.access_token(alice)
    assert bench.refresh_calls() == []


async def test_a_refresh_answer_without_a_refresh_token_ends_the_chain_cleanly(
    bench: Bench,
) -> None:
    alice = await bench.login("alice")
    bench.emulator.state.config.grant_offline_access = False  # withdrawn after the login
    bench.advance(ACCESS_TTL + 1)

    token = await bench.keeper.access_token(alice)

    stored = bench.stored(alice)
    assert token == stored.access_token
    assert stored.refresh_token == ""  # the spent one is not kept
    bench.advance(ACCESS_TTL + 1)
    with pytest.raises(NeedsLogin, match="offline access"):
        await bench.keeper.access_token(alice)
    assert len(bench.refresh_calls(alice)) == 1
