"""A cap on the gateway's own calls to Feishu's OAuth endpoints, interactive calls first.

Feishu allows about 50 calls a second and 1000 a minute per app. The gateway keeps its OAuth
traffic well below that (settings), lets background renewals use only a share of it, and makes
them wait while any interactive call is waiting. A 429 from Feishu pauses everyone until the
reset time it names.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..config import Settings

MINUTE = 60.0
SECOND = 1.0
# How long a background call naps before it looks again while interactive calls wait; short,
# so that it goes as soon as they are through.
BACKGROUND_NAP = 0.05
# Longest single sleep of a waiting call, so that a 429 pause that arrives meanwhile is obeyed.
LONGEST_NAP = 0.25


class Priority:
    """Whether a call may wait for interactive ones. Mutable: an interactive caller that joins
    a background renewal promotes it."""

    def __init__(self, *, background: bool) -> None:
        self.background = background


class CallBudget:
    def __init__(
        self,
        per_second: int,
        per_minute: int,
        background_share: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = ((SECOND, per_second), (MINUTE, per_minute))
        self._share = background_share
        self._monotonic = monotonic
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._interactive_waiting = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> CallBudget:
        return cls(
            settings.token_calls_per_second,
            settings.token_calls_per_minute,
            settings.renewal_share,
        )

    def pause(self, seconds: float) -> None:
        """Feishu said 429: nobody calls again before ``seconds`` have passed."""
        self._paused_until = max(self._paused_until, self._monotonic() + seconds)

    async def acquire(self, priority: Priority) -> None:
        """Wait until one more call fits, then count it."""
        counted = False
        try:
            while True:
                if not priority.background and not counted:
                    self._interactive_waiting += 1
                    counted = True
                now = self._monotonic()
                wait = self._wait(now, priority.background)
                if wait <= 0:
                    self._sent.append(now)
                    return
                await asyncio.sleep(
                    min(wait, BACKGROUND_NAP if priority.background else LONGEST_NAP)
                )
        finally:
            if counted:
                self._interactive_waiting -= 1

    def _wait(self, now: float, background: bool) -> float:
        while self._sent and self._sent[0] <= now - MINUTE:
            self._sent.popleft()
        waits = [self._paused_until - now]
        if background and self._interactive_waiting:
            waits.append(BACKGROUND_NAP)
        share = self._share if background else 1.0
        for window, limit in self._limits:
            allowed = max(1, int(limit * share))
            inside = [t for t in self._sent if t > now - window]
            if len(inside) >= allowed:
                # The call that must leave the window before one more fits.
                waits.append(inside[-allowed] + window - now)
        return max(waits)
