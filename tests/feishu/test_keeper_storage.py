"""A refresh answered, then lost: the new grant is stored before it is used, a failed write
keeps it in memory and retries, and a truly lost answer is a clear message, nothing worse."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from tokenbench import Bench, fp

from larkgate.feishu.keeper import NeedsLogin, TryAgain

pytestmark = pytest.mark.anyio

ACCESS_TTL = 7200


def fail_next_token_writes(bench: Bench, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    real = bench.store.replace_tokens
    left = [times]

    def replace_tokens(*args: Any, **kwargs: Any) -> bool:
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return bool(real(*args, **kwargs))

    monkeypatch.setattr(bench.store, "replace_tokens", replace_tokens)


async def test_a_failed_write_keeps_the_grant_and_the_next_call_stores_it(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await bench.login("alice")
    old = bench.stored(alice)
    row = bench.store.raw_user_row(alice)
    bench.advance(ACCESS_TTL + 1)
    fail_next_token_writes(bench, monkeypatch, times=2)

    with pytest.raises(TryAgain, match="could not save it") as raised:
        await bench.keeper.access_token(alice)
    assert "log in" not in str(raised.value)
    assert bench.store.raw_user_row(alice) == row  # nothing half-written
    with pytest.raises(TryAgain):  # the write still fails: still no new token handed out
        await bench.keeper.access_token(alice)

    token = await bench.keeper.access_token(alice)

    live = bench.feishu_tokens(alice)
    assert token == live["access_token"]
    assert bench.stored(alice).refresh_token == live["refresh_token"]
    # One refresh only: the spent refresh token was never sent again.
    assert [c.token_fingerprint for c in bench.refresh_calls(alice)] == [fp(old.refresh_token)]


async def test_the_renewal_job_stores_a_held_grant(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    fail_next_token_writes(bench, monkeypatch, times=1)
    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)

    report = await bench.gateway.renewal.run_pass()

    assert report.held_unsaved == 0
    assert bench.stored(alice).refresh_token == bench.feishu_tokens(alice)["refresh_token"]


async def test_an_answer_lost_in_a_crash_is_a_clear_login_request_and_nothing_else(
    make_bench: Callable[..., Bench], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = make_bench()
    alice = await bench.login("alice")
    bob = await bench.login("bob")
    bench.advance(ACCESS_TTL - 200)
    fail_next_token_writes(bench, monkeypatch, times=1)
    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)
    bob_row = bench.store.raw_user_row(bob)
    await bench.close()  # the gateway dies holding Alice's unsaved grant

    restarted = make_bench(clock=bench.gateway.clock)
    with pytest.raises(NeedsLogin, match="renewal of your login was lost") as raised:
        await restarted.keeper.access_token(alice)

    assert "gateway stopping before it could save it" in str(raised.value)
    assert restarted.store.raw_user_row(bob) == bob_row
    assert restarted.stored(bob).access_token  # Bob's record still opens
    restarted.advance(ACCESS_TTL)
    assert await restarted.keeper.access_token(bob) == restarted.feishu_tokens(bob)["access_token"]
    # Alice is back after one login.
    await restarted.login("alice", session_id="alice-again")
    assert await restarted.keeper.access_token(alice)


async def test_a_new_login_during_a_refresh_wins(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    bench.emulator.state.faults.hang(0.4, "token")
    refreshing = asyncio.create_task(bench.keeper.access_token(alice))
    await asyncio.sleep(0.1)
    bench.emulator.state.faults.hang(0, "all")
    await bench.login("alice", session_id="second-login")
    login_tokens = bench.stored(alice)

    await refreshing

    assert bench.stored(alice) == login_tokens
