"""The background renewal keeps idle users' logins alive, spread out, across restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tokenbench import Bench

from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from larkgate.emulator.control_client import EmulatorControl

pytestmark = pytest.mark.anyio

DAY = 86400


async def test_an_idle_user_keeps_the_login_for_weeks(bench: Bench) -> None:
    alice = await bench.login("alice")

    for _week in range(3):
        bench.advance(5.5 * DAY)
        report = await bench.gateway.renewal.run_pass()
        assert report.renewed == 1

    assert bench.stored(alice).refresh_token == bench.feishu_tokens(alice)["refresh_token"]
    assert await bench.keeper.access_token(alice) == bench.feishu_tokens(alice)["access_token"]
    assert bench.store.get_user(alice).needs_login is None


async def test_users_not_yet_due_are_left_alone(bench: Bench) -> None:
    await bench.login("alice")
    bench.advance(DAY)

    report = await bench.gateway.renewal.run_pass()

    assert report.due == 0
    assert bench.refresh_calls() == []


async def test_the_renewal_picks_up_after_a_restart(make_bench: Callable[..., Bench]) -> None:
    before = make_bench()
    alice = await before.login("alice")
    await before.close()

    after = make_bench(clock=before.gateway.clock)
    after.advance(5.5 * DAY)
    report = await after.gateway.renewal.run_pass()

    assert report.renewed == 1
    assert after.stored(alice).refresh_token == after.feishu_tokens(alice)["refresh_token"]


async def test_a_revoked_user_is_marked_and_the_others_renewed(bench: Bench) -> None:
    alice = await bench.login("alice")
    bob = await bench.login("bob")
    EmulatorControl(bench.emulator.url).revoke(bob)
    bench.advance(5.5 * DAY)

    report = await bench.gateway.renewal.run_pass()

    assert (report.renewed, report.needs_login) == (1, 1)
    assert "revoked" in bench.store.get_user(bob).needs_login
    assert bench.store.get_user(alice).needs_login is None
    bench.advance(5.5 * DAY)
    assert (await bench.gateway.renewal.run_pass()).due == 1  # Bob is not tried again


async def test_a_passing_failure_is_retried_on_the_next_pass(bench: Bench) -> None:
    alice = await bench.login("alice")
    bench.advance(5.5 * DAY)
    bench.queue_token_faults(*[(500, 20050)] * bench.gateway.settings.refresh_attempts)

    failed = await bench.gateway.renewal.run_pass()
    retried = await bench.gateway.renewal.run_pass()

    assert (failed.failed, retried.renewed) == (1, 1)
    assert bench.store.get_user(alice).needs_login is None


async def test_a_record_stored_before_the_deadline_column_is_looked_at_once(bench: Bench) -> None:
    alice = await bench.login("alice")
    with bench.store._database.tx() as db:
        db.execute("UPDATE users SET refresh_expires_at = NULL")

    report = await bench.gateway.renewal.run_pass()

    assert report.due == 1 and report.renewed == 0
    assert bench.store.users_to_renew(bench.gateway.clock.now() + DAY) == []
    assert bench.stored(alice).refresh_expires_at > 0


@pytest.fixture
async def crowd(tmp_path: Path) -> AsyncIterator[Bench]:
    config = EmulatorConfig(users=[make_user(f"user{n:02d}") for n in range(24)])
    with RunningEmulator(config) as emulator:
        bench = Bench.build(
            tmp_path / "data", emulator, token_calls_per_second=50, renewal_share=1.0
        )
        try:
            yield bench
        finally:
            await bench.close()


async def test_people_who_logged_in_together_renew_spread_out(crowd: Bench) -> None:
    users = [await crowd.login(u.user_id) for u in crowd.emulator.state.config.users]
    settings = crowd.gateway.settings
    offsets = {crowd.gateway.renewal.offset(u) for u in users}
    assert len(offsets) == len(users)
    assert all(0 <= o < settings.renewal_spread for o in offsets)
    # Half the spread before the latest renewal time: only those with a late offset are due.
    refresh_ttl = crowd.emulator.state.config.refresh_token_ttl
    crowd.advance(refresh_ttl - settings.renewal_before - settings.renewal_spread / 2)

    first = await crowd.gateway.renewal.run_pass()
    crowd.advance(settings.renewal_spread / 2 + 60)
    second = await crowd.gateway.renewal.run_pass()

    assert 0 < first.renewed < len(users)
    assert first.renewed + second.renewed == len(users)
