"""Soak: 300 logged-in users go idle for most of a week; the background renewal refreshes all
of them through the emulator with Feishu's rate limit on (50/s, 1000/min) and some 429s on
top, and nobody needs a new login."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tokenbench import Bench

from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from larkgate.emulator.grants import CodeRequest
from larkgate.store import Tokens

pytestmark = pytest.mark.anyio

USERS = 300
DAY = 86400
REDIRECT = "http://127.0.0.1:9/oauth/callback"


@pytest.fixture
async def crowd(tmp_path: Path) -> AsyncIterator[Bench]:
    config = EmulatorConfig(users=[make_user(f"user{n:03d}") for n in range(USERS)])
    with RunningEmulator(config) as emulator:
        bench = Bench.build(
            tmp_path / "data",
            emulator,
            # Close under Feishu's 50/s, so only the injected 429s below are refused.
            token_calls_per_second=45,
            token_calls_per_minute=1000,
            renewal_share=1.0,
            renewal_concurrency=16,
        )
        try:
            yield bench
        finally:
            await bench.close()


def log_everyone_in(bench: Bench) -> list[str]:
    """Logins are not what this test is about: grant them in-process, store them as a login
    would, and keep the rate limit for the refreshes."""
    grants = bench.emulator.state.grants
    now = bench.gateway.clock.now()
    open_ids = []
    for user in bench.emulator.state.config.users:
        code = grants.issue_code(
            client_id=bench.emulator.state.config.app_id,
            redirect_uri=REDIRECT,
            scope=("offline_access",),
            code_challenge=None,
            challenge_method=None,
            open_id=user.open_id,
        )
        issued = grants.exchange_code(
            CodeRequest(
                code=code,
                client_id=bench.emulator.state.config.app_id,
                redirect_uri=REDIRECT,
                code_verifier=None,
                reject_unrequested_verifier=False,
            )
        )
        assert issued.refresh_token and issued.refresh_token_expires_in
        tokens = Tokens(
            access_token=issued.access_token,
            access_expires_at=now + issued.expires_in,
            refresh_token=issued.refresh_token,
            refresh_expires_at=now + issued.refresh_token_expires_in,
            authorized_at=now,
            obtained_at=now,
        )
        bench.store.upsert_user(
            user.open_id,
            union_id=user.union_id,
            tenant_key=user.tenant_key,
            name=user.name,
            tokens=tokens,
        )
        open_ids.append(user.open_id)
    return open_ids


async def test_300_idle_users_are_renewed_under_the_rate_limit_and_none_is_lost(
    crowd: Bench,
) -> None:
    users = log_everyone_in(crowd)
    crowd.emulator.state.set_rate_limits(per_second=50, per_minute=1000)
    # Other traffic of the same app hits the limit now and then: Feishu answers 429.
    crowd.queue_token_faults(*[(429, 99991400)] * 5)
    crowd.advance(5.5 * DAY)

    first = await crowd.gateway.renewal.run_pass()
    # Whatever a pass could not finish, the next one does, as the running job would.
    second = await crowd.gateway.renewal.run_pass()

    assert first.renewed + second.renewed == USERS
    assert first.needs_login == second.needs_login == 0
    assert all(crowd.store.get_user(u).needs_login is None for u in users)
    for user in users:
        assert crowd.stored(user).refresh_token == crowd.feishu_tokens(user)["refresh_token"]
    answered = Counter(c.status for c in crowd.refresh_calls())
    assert answered[200] == USERS
    assert answered[429] >= 5
