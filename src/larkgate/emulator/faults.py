"""Trouble on demand: queued error answers, hanging endpoints and the app's rate limit."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from .clock import Clock
from .config import EmulatorConfig

# "token" is the OAuth token endpoints, "app_token" the tenant/app token endpoints and
# "openapi" everything else under /open-apis. Keeping app tokens apart means a child that
# happens to fetch a tenant token cannot steal a fault a test queued for a user refresh.
EndpointClass = Literal["token", "app_token", "openapi"]
HangTarget = Literal["token", "openapi", "all"]


@dataclass(frozen=True)
class InjectedFault:
    status: int
    code: int
    message: str | None = None


class FaultPlan:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[EndpointClass, deque[InjectedFault]] = {
            "token": deque(),
            "app_token": deque(),
            "openapi": deque(),
        }
        self._hang_seconds = 0.0
        self._hang_target: HangTarget = "all"

    def queue(self, endpoint: EndpointClass, faults: list[InjectedFault]) -> None:
        with self._lock:
            self._queues[endpoint].extend(faults)

    def hang(self, seconds: float, target: HangTarget) -> None:
        with self._lock:
            self._hang_seconds = seconds
            self._hang_target = target

    def clear(self) -> None:
        with self._lock:
            for pending in self._queues.values():
                pending.clear()
            self._hang_seconds = 0.0
            self._hang_target = "all"

    def next_fault(self, endpoint: EndpointClass) -> InjectedFault | None:
        with self._lock:
            pending = self._queues[endpoint]
            return pending.popleft() if pending else None

    def hang_for(self, endpoint: EndpointClass) -> float:
        with self._lock:
            if self._hang_target in ("all", endpoint):
                return self._hang_seconds
            return 0.0

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "pending": {name: len(q) for name, q in self._queues.items()},
                "hang_seconds": self._hang_seconds,
                "hang_paths": self._hang_target,
            }


class RateLimiter:
    """Feishu's per-app limits as sliding windows over the emulator clock."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()

    def admit(self) -> int | None:
        """Count one call; return None if it may pass, else seconds until it could."""
        limits = [
            (window, limit)
            for window, limit in (
                (1.0, self._config.rate_limit_per_second),
                (60.0, self._config.rate_limit_per_minute),
            )
            if limit is not None
        ]
        if not limits:
            return None
        now = self._clock.now()
        with self._lock:
            while self._recent and self._recent[0] <= now - 60.0:
                self._recent.popleft()
            waits = []
            for window, limit in limits:
                inside = [t for t in self._recent if t > now - window]
                if len(inside) >= limit:
                    waits.append(inside[-limit] + window - now)
            if waits:
                # Refused calls do not use up quota, as with Feishu's gateway.
                return max(1, math.ceil(max(waits)))
            self._recent.append(now)
            return None
