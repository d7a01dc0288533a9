"""Per-address rate limits for the login and OAuth endpoints: a token bucket per address.

Real time (monotonic), not the gateway clock: a limit is about requests per wall-clock minute.
Behind a reverse proxy the address is the client's only when uvicorn trusts the proxy's
forwarded headers (its ``forwarded_allow_ips``, loopback by default).
"""

from __future__ import annotations

import math
import time

# Past this many tracked addresses the fullest buckets are forgotten first: a flood of
# one-off addresses must not grow memory without bound, and a full bucket loses nothing.
MAX_TRACKED = 10_000


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60.0
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    @property
    def retry_after(self) -> int:
        """Seconds until one more request is allowed once a bucket is empty."""
        return max(1, math.ceil(1 / self._refill_per_second))

    def allow(self, bucket: str, address: str) -> bool:
        now = time.monotonic()
        key = (bucket, address)
        tokens, then = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - then) * self._refill_per_second)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED:
            self._forget_fullest(now)
        return allowed

    def _forget_fullest(self, now: float) -> None:
        def level(item: tuple[tuple[str, str], tuple[float, float]]) -> float:
            tokens, then = item[1]
            return tokens + (now - then) * self._refill_per_second

        ranked = sorted(self._buckets.items(), key=level, reverse=True)
        for key, _ in ranked[: len(ranked) // 2]:
            del self._buckets[key]
