"""Feishu failing: passing trouble is retried and never logs anyone out; only a verdict on the
user's grant asks for a new login, and the reason is kept without secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest
from tokenbench import Bench, fp

from larkgate.emulator.control_client import EmulatorControl
from larkgate.feishu.keeper import NeedsLogin, TryAgain
from support import free_port

pytestmark = pytest.mark.anyio

ACCESS_TTL = 7200


async def test_500_503_429_then_success_refreshes_with_the_same_stored_token(
    bench: Bench,
) -> None:
    alice = await bench.login("alice")
    before = bench.stored(alice)
    bench.advance(ACCESS_TTL + 1)
    bench.queue_token_faults((500, 20050), (503, 20072), (429, 99991400))

    token = await bench.keeper.access_token(alice)

    calls = bench.refresh_calls(alice)
    assert [c.status for c in calls] == [500, 503, 429, 200]
    assert calls[-1].token_fingerprint == fp(before.refresh_token)
    assert token == bench.feishu_tokens(alice)["access_token"]
    assert bench.store.get_user(alice).needs_login is None


async def test_feishu_down_for_every_try_answers_try_again_and_changes_nothing(
    bench: Bench,
) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    row = bench.store.raw_user_row(alice)
    attempts = bench.gateway.settings.refresh_attempts
    bench.queue_token_faults(*[(503, 20072)] * attempts)

    with pytest.raises(TryAgain, match="try again") as raised:
        await bench.keeper.access_token(alice)

    assert "log in" not in str(raised.value)
    assert bench.store.raw_user_row(alice) == row
    assert len(bench.refresh_calls(alice)) == attempts
    # Feishu is back: the next call simply works, with the refresh token that was kept.
    assert await bench.keeper.access_token(alice) == bench.feishu_tokens(alice)["access_token"]


async def test_a_still_valid_token_keeps_serving_while_feishu_is_down(bench: Bench) -> None:
    alice = await bench.login("alice")
    current = bench.stored(alice).access_token
    bench.advance(ACCESS_TTL - 60)
    bench.queue_token_faults(*[(500, 20050)] * bench.gateway.settings.refresh_attempts)

    assert await bench.keeper.access_token(alice) == current
    assert bench.stored(alice).access_token == current


async def test_unreachable_feishu_is_a_passing_failure(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench()
    alice = await bench.login("alice")
    bench.gateway.settings.token_url = f"http://127.0.0.1:{free_port()}/open-apis/token"
    bench.advance(ACCESS_TTL + 1)

    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)
    assert bench.store.get_user(alice).needs_login is None


async def until(done: Callable[[], bool]) -> None:
    """Wait for something the emulator or the keeper does in the background (no timing)."""
    for _ in range(400):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("it did not happen")


async def test_a_refresh_feishu_answers_late_is_stored_and_not_sent_twice(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench(feishu_timeout=0.2)
    alice = await bench.login("alice")
    spent = bench.stored(alice).refresh_token
    bench.advance(ACCESS_TTL + 1)
    bench.emulator.state.faults.hang(2.0, "token")

    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)  # answered after one call's time
    bench.emulator.state.faults.hang(0, "all")
    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)  # joins the refresh still waiting
    await until(lambda: bench.stored(alice).refresh_token != spent)  # the late answer, stored

    assert await bench.keeper.access_token(alice) == bench.feishu_tokens(alice)["access_token"]
    assert len(bench.refresh_calls(alice)) == 1
    assert bench.store.get_user(alice).needs_login is None


async def test_an_answer_lost_in_the_network_is_a_clear_login_request(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench(feishu_timeout=0.2, refresh_answer_wait=0.3, refresh_attempts=1)
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    bench.emulator.state.faults.hang(1.5, "token")  # Feishu acts, but after we stop listening
    with pytest.raises(TryAgain):
        await bench.keeper.access_token(alice)
    bench.emulator.state.faults.hang(0, "all")
    await until(lambda: [c.status for c in bench.refresh_calls(alice)] == [200])

    with pytest.raises(NeedsLogin, match="lost \\(a network failure"):
        await bench.keeper.access_token(alice)
    assert bench.refresh_calls(alice)[-1].code == 20073


async def test_429_waits_for_the_reset_feishu_names(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    bench.emulator.state.set_rate_limits(per_second=1, per_minute=None)
    bench.emulator.state.calls.clear()
    # Use up this second's one call, so the refresh meets a 429 with a reset header.
    await bench.gateway.http.get(f"{bench.emulator.url}/open-apis/im/v1/chats")

    await bench.keeper.access_token(alice)

    # A retry before the reset the 429 named would have met the limit again: one 429 only.
    assert [c.status for c in bench.refresh_calls(alice)] == [429, 200]


async def test_revoked_login_needs_a_new_login_with_the_reason_kept(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    EmulatorControl(bench.emulator.url).revoke(alice)
    stored = bench.stored(alice)

    with pytest.raises(NeedsLogin, match="revoked"):
        await bench.keeper.access_token(alice)

    reason = bench.store.get_user(alice).needs_login
    assert "revoked" in reason
    assert stored.refresh_token not in reason and stored.access_token not in reason
    # Asking again does not send the dead refresh token a second time.
    with pytest.raises(NeedsLogin, match="revoked"):
        await bench.keeper.access_token(alice)
    assert len(bench.refresh_calls(alice)) == 1


async def test_a_week_idle_without_renewal_is_an_expired_login(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(8 * 86400)

    with pytest.raises(NeedsLogin, match="expired"):
        await bench.keeper.access_token(alice)
    assert bench.refresh_calls(alice)[-1].code == 20037


async def test_a_refresh_token_used_elsewhere_asks_for_a_login(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.emulator.state.grants.refresh(bench.stored(alice).refresh_token)
    bench.advance(ACCESS_TTL + 1)

    with pytest.raises(NeedsLogin, match="renewal of your login was lost"):
        await bench.keeper.access_token(alice)
    assert bench.refresh_calls(alice)[-1].code == 20073


async def test_a_refresh_token_feishu_never_issued_asks_for_a_login(bench: Bench) -> None:
    alice = await bench.login("alice")
    record = bench.store.token_record(alice)
    bench.store.replace_tokens(
        alice, replace(record.tokens, refresh_token="ur-not-from-feishu"), record.version
    )
    bench.advance(ACCESS_TTL + 1)

    with pytest.raises(NeedsLogin, match="no longer recognises"):
        await bench.keeper.access_token(alice)


async def test_the_gateways_own_bad_secret_never_logs_a_user_out(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench()
    alice = await bench.login("alice")
    row = bench.store.raw_user_row(alice)
    bench.gateway.settings.app_secret = type(bench.gateway.settings.app_secret)("wrong")
    bench.advance(ACCESS_TTL + 1)

    with pytest.raises(TryAgain, match="APP_SECRET") as raised:
        await bench.keeper.access_token(alice)

    assert "log in" not in str(raised.value)
    assert bench.store.raw_user_row(alice) == row
    assert len(bench.refresh_calls(alice)) == 1  # not retried: it cannot get better by itself


async def test_already_used_because_another_process_renewed_keeps_the_user(
    bench: Bench,
) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    bench.emulator.state.faults.hang(1.0, "token")
    ours = asyncio.create_task(bench.keeper.access_token(alice))
    await asyncio.sleep(0.2)
    # Meanwhile another gateway process sharing the store renews first and stores its answer.
    record = bench.store.token_record(alice)
    issued = bench.emulator.state.grants.refresh(record.tokens.refresh_token)
    newer = replace(
        record.tokens, access_token=issued.access_token, refresh_token=issued.refresh_token
    )
    assert bench.store.replace_tokens(alice, newer, record.version)

    token = await ours

    assert bench.refresh_calls(alice)[-1].code == 20073
    assert token == issued.access_token
    assert bench.store.get_user(alice).needs_login is None


async def test_concurrent_callers_share_one_failure(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(ACCESS_TTL + 1)
    attempts = bench.gateway.settings.refresh_attempts
    bench.queue_token_faults(*[(503, 20072)] * attempts)

    outcomes = await asyncio.gather(
        *(bench.keeper.access_token(alice) for _ in range(10)), return_exceptions=True
    )

    assert all(isinstance(o, TryAgain) for o in outcomes)
    assert len(bench.refresh_calls(alice)) == attempts
