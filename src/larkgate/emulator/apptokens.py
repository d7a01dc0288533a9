"""Tenant and app access tokens, the app's own identity next to its users'."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from .clock import Clock
from .config import EmulatorConfig

# Feishu hands out the same token again until less than this much of its life is left.
_REUSE_MARGIN = 30 * 60


@dataclass
class _AppToken:
    token: str
    expires_at: float


class AppTokens:
    """The app's tenant_access_token and app_access_token, one live of each at a time."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._issued: dict[str, _AppToken] = {}
        self._current: dict[str, _AppToken] = {}

    def reset(self) -> None:
        with self._lock:
            self._issued.clear()
            self._current.clear()

    def issue(self, prefix: str) -> tuple[str, int]:
        """Return a token with prefix `t-` or `a-` and its remaining life in seconds."""
        now = self._clock.now()
        with self._lock:
            current = self._current.get(prefix)
            if current is None or current.expires_at - now < _REUSE_MARGIN:
                current = _AppToken(
                    prefix + secrets.token_urlsafe(32), now + self._config.tenant_token_ttl
                )
                self._current[prefix] = current
                self._issued[current.token] = current
            return current.token, int(current.expires_at - now)

    def is_live(self, token: str) -> bool:
        with self._lock:
            found = self._issued.get(token)
            return found is not None and self._clock.now() < found.expires_at
