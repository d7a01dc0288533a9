"""When and how often the keeper refreshes: once per user however many ask, on local time."""

from __future__ import annotations

import asyncio

import pytest
from tokenbench import Bench, fp

from larkgate.feishu.keeper import NeedsLogin

pytestmark = pytest.mark.anyio

ACCESS_TTL = 7200


async def test_twenty_calls_at_once_near_expiry_make_exactly_one_refresh(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL - 10)
    bench.emulator.state.calls.clear()

    tokens = await asyncio.gather(*(bench.keeper.access_token(alice) for _ in range(20)))

    assert len(bench.refresh_calls(alice)) == 1
    live = bench.feishu_tokens(alice)
    assert set(tokens) == {live["access_token"]}
    assert bench.stored(alice).refresh_token == live["refresh_token"]


async def test_renewal_and_rejected_token_join_the_interactive_refresh(bench: Bench) -> None:
    alice = await bench.login("alice")
    old = bench.stored(alice)
    bench.advance(ACCESS_TTL - 10)
    bench.emulator.state.calls.clear()

    results = await asyncio.gather(
        bench.keeper.access_token(alice),
        bench.keeper.refresh_rejected(alice, old.access_token),
        bench.keeper.renew(alice, horizon=old.refresh_expires_at + 1),
        bench.keeper.access_token(alice),
    )

    assert len(bench.refresh_calls(alice)) == 1
    assert results[0] == results[1] == results[3] == bench.feishu_tokens(alice)["access_token"]


async def test_a_caller_that_goes_away_does_not_cut_the_refresh(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL - 10)
    bench.emulator.state.faults.hang(0.3, "token")
    caller = asyncio.create_task(bench.keeper.access_token(alice))
    await asyncio.sleep(0.1)

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    bench.emulator.state.faults.hang(0, "all")
    token = await bench.keeper.access_token(alice)

    assert len(bench.refresh_calls(alice)) == 1
    assert token == bench.feishu_tokens(alice)["access_token"]
    assert bench.stored(alice).refresh_token == bench.feishu_tokens(alice)["refresh_token"]


async def test_expiry_is_counted_on_the_local_clock_not_feishus(make_bench: object) -> None:
    bench: Bench = make_bench(refresh_margin=300)  # type: ignore[operator]
    # Feishu's clock runs an hour ahead of ours; its timestamps must not matter.
    bench.emulator.state.clock.advance(3600)
    alice = await bench.login("alice")
    first = bench.stored(alice)
    assert first.access_expires_at - first.obtained_at == ACCESS_TTL
    assert abs(first.obtained_at - bench.gateway.clock.now()) < 60

    bench.advance(ACCESS_TTL - 301)
    assert await bench.keeper.access_token(alice) == first.access_token
    bench.advance(2)
    assert await bench.keeper.access_token(alice) != first.access_token
    assert len(bench.refresh_calls(alice)) == 1


async def test_short_lived_tokens_are_not_refreshed_on_every_call(make_bench: object) -> None:
    bench: Bench = make_bench(refresh_margin=300)  # type: ignore[operator]
    bench.emulator.state.config.access_token_ttl = 120
    alice = await bench.login("alice")

    for _ in range(5):
        await bench.keeper.access_token(alice)
    assert bench.refresh_calls(alice) == []

    bench.advance(61)
    await bench.keeper.access_token(alice)
    assert len(bench.refresh_calls(alice)) == 1


async def test_refreshing_one_user_leaves_the_other_byte_for_byte(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL - 100)
    bob = await bench.login("bob")
    bob_row = bench.store.raw_user_row(bob)
    bob_token = bench.stored(bob).access_token
    bench.advance(90)

    tokens = await asyncio.gather(*(bench.keeper.access_token(u) for u in [alice, bob] * 10))

    assert bench.store.raw_user_row(bob) == bob_row
    assert set(tokens[1::2]) == {bob_token}
    assert set(tokens[0::2]) == {bench.feishu_tokens(alice)["access_token"]}
    assert [c.open_id for c in bench.refresh_calls()] == [alice]


async def test_a_refresh_reads_the_refresh_token_it_sends_from_the_store(bench: Bench) -> None:
    alice = await bench.login("alice")
    for _ in range(3):
        sent = bench.stored(alice).refresh_token
        bench.advance(ACCESS_TTL)
        await bench.keeper.access_token(alice)
        assert bench.refresh_calls(alice)[-1].token_fingerprint == fp(sent)
    assert bench.stored(alice).refresh_token == bench.feishu_tokens(alice)["refresh_token"]


async def test_a_user_who_never_logged_in_is_asked_to(bench: Bench) -> None:
    with pytest.raises(NeedsLogin, match="not logged in"):
        await bench.keeper.access_token("ou_nobody")
