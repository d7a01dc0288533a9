"""The background renewal: keeps idle users' refresh tokens alive before they expire.

A refresh token lives about 7 days and every refresh brings a new one, so a user who works
daily never needs this job; one who is away for a week would lose the login without it. Each
pass reads the store, so the job picks up where it was after a restart. It takes the users
whose refresh token expires within ``renewal_before`` plus a per-user offset (so that people
who logged in together do not renew together), soonest first, and renews a few at a time
through the keeper at background priority: its calls use only a share of the OAuth budget and
wait while interactive calls wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from dataclasses import dataclass

from ..clock import Clock
from ..config import Settings
from ..store import Store
from ..userkey import user_key
from .keeper import NeedsLogin, TokenKeeper, TryAgain

log = logging.getLogger(__name__)

_jitter = random.SystemRandom()


@dataclass
class RenewalPass:
    """What one pass did."""

    due: int = 0
    renewed: int = 0
    needs_login: int = 0
    failed: int = 0
    held_unsaved: int = 0


class RenewalJob:
    def __init__(
        self, settings: Settings, store: Store, keeper: TokenKeeper, clock: Clock
    ) -> None:
        self._settings = settings
        self._store = store
        self._keeper = keeper
        self._clock = clock
        self._wake = asyncio.Event()
        self.last_pass: RenewalPass | None = None

    def offset(self, user_id: str) -> float:
        """A stable per-user share of the spread, the same after every restart."""
        fraction = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:4]) / 2**32
        return fraction * self._settings.renewal_spread

    def kick(self) -> None:
        """Start the next pass now (tests that move the clock; an operator's command)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                self.last_pass = await self.run_pass()
            except Exception:
                log.exception("renewal pass failed; the next pass tries again")
            await self._nap()

    async def _nap(self) -> None:
        interval = self._settings.renewal_interval * _jitter.uniform(0.9, 1.1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), interval)
        self._wake.clear()

    async def run_pass(self) -> RenewalPass:
        s = self._settings
        report = RenewalPass(held_unsaved=self._keeper.flush_unsaved())
        now = self._clock.now()
        due = []
        for user_id, expires_at in self._store.users_to_renew(
            now + s.renewal_before + s.renewal_spread
        ):
            horizon = now + s.renewal_before + self.offset(user_id)
            if expires_at is None or expires_at <= horizon:
                due.append((user_id, horizon))
        report.due = len(due)
        pending = iter(due)

        async def worker() -> None:
            for user_id, horizon in pending:
                await self._renew_one(user_id, horizon, report)

        await asyncio.gather(*(worker() for _ in range(min(s.renewal_concurrency, len(due)))))
        if due or report.held_unsaved:
            log.info(
                "renewal pass: %d due, %d renewed, %d need a login, %d to retry, %d held unsaved",
                report.due,
                report.renewed,
                report.needs_login,
                report.failed,
                report.held_unsaved,
            )
        return report

    async def _renew_one(self, user_id: str, horizon: float, report: RenewalPass) -> None:
        try:
            if await self._keeper.renew(user_id, horizon):
                report.renewed += 1
        except NeedsLogin:
            report.needs_login += 1
        except TryAgain:
            report.failed += 1
        except Exception:
            # One user's trouble must not stop the others' renewals.
            report.failed += 1
            log.exception("renewal of user %s failed", user_key(user_id))
