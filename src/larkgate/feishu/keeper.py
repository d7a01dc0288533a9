"""Keeps each user's Feishu access token current without ever losing the user.

Feishu's refresh tokens are single use: two refreshes racing for one user log that user out.
So refreshes are single-flight per user, the store is re-read under the lock (another path may
have refreshed already), and the new tokens are durably stored before the access token is used.
Only a terminal answer from Feishu asks the user to log in again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace

from ..clock import Clock
from ..config import Settings
from ..instances.pool import user_key
from ..store import Store, Tokens
from .oauth import FeishuError, FeishuOAuth, TokenGrant

log = logging.getLogger(__name__)

TRANSIENT_ATTEMPTS = 4
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0


class NeedsLogin(Exception):
    """The user must log in again; the message says why, without secrets."""


class TryAgain(Exception):
    """Feishu is having a passing problem; the stored tokens are untouched."""


class TokenKeeper:
    def __init__(self, settings: Settings, store: Store, oauth: FeishuOAuth, clock: Clock) -> None:
        self._settings = settings
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.outcomes: dict[str, int] = {"ok": 0, "transient": 0, "terminal": 0}

    def _lock(self, user_id: str) -> asyncio.Lock:
        return self._locks.setdefault(user_id, asyncio.Lock())

    def _load(self, user_id: str) -> tuple[Tokens, int]:
        loaded = self._store.load_tokens(user_id)
        if loaded is None:
            user = self._store.get_user(user_id)
            reason = user.needs_login if user and user.needs_login else "not logged in"
            raise NeedsLogin(reason)
        return loaded

    async def access_token(self, user_id: str) -> str:
        """The user's current access token, refreshed first if it is about to expire."""
        tokens, _version = self._load(user_id)
        if not self._due(tokens):
            return tokens.access_token
        async with self._lock(user_id):
            tokens, version = self._load(user_id)
            if not self._due(tokens):
                return tokens.access_token
            return (await self._refresh(user_id, tokens, version)).access_token

    async def refresh_rejected(self, user_id: str, rejected_token: str) -> str:
        """Feishu called ``rejected_token`` invalid: refresh once, unless someone already did."""
        async with self._lock(user_id):
            tokens, version = self._load(user_id)
            if tokens.access_token != rejected_token:
                return tokens.access_token
            return (await self._refresh(user_id, tokens, version)).access_token

    def _due(self, tokens: Tokens) -> bool:
        return tokens.access_expires_at - self._settings.refresh_margin <= self._clock.now()

    async def _refresh(self, user_id: str, tokens: Tokens, version: int) -> Tokens:
        if not tokens.refresh_token:
            if tokens.access_expires_at > self._clock.now():
                return tokens
            self._store.mark_needs_login(user_id, "access token expired and no refresh token")
            raise NeedsLogin(
                "your Feishu access token expired and this login cannot be refreshed "
                "(offline_access was not granted)"
            )
        grant = await self._refresh_with_retries(user_id, tokens.refresh_token)
        fresh = replace(
            tokens,
            access_token=grant.access_token,
            access_expires_at=grant.access_expires_at,
            refresh_token=grant.refresh_token,
            refresh_expires_at=grant.refresh_expires_at,
            scope=grant.scope or tokens.scope,
        )
        if not self._store.replace_tokens(user_id, fresh, version):
            # Only this lock writes a user's tokens, so a lost swap means a new login
            # replaced them meanwhile; that login's tokens are the ones to keep.
            log.warning("user %s logged in during a refresh; keeping the login", user_key(user_id))
            return self._load(user_id)[0]
        self.outcomes["ok"] += 1
        log.info("refreshed token of user %s", user_key(user_id))
        return fresh

    async def _refresh_with_retries(self, user_id: str, refresh_token: str) -> TokenGrant:
        delay = BACKOFF_BASE
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return await self._oauth.refresh(refresh_token)
            except FeishuError as exc:
                if not exc.transient:
                    self.outcomes["terminal"] += 1
                    reason = f"Feishu refused the refresh (code {exc.code})"
                    self._store.mark_needs_login(user_id, reason)
                    log.warning("user %s needs a new login: %s", user_key(user_id), reason)
                    raise NeedsLogin(reason) from None
                self.outcomes["transient"] += 1
                log.warning(
                    "refresh for user %s failed for a passing reason (attempt %d): %s",
                    user_key(user_id),
                    attempt,
                    exc,
                )
                if attempt == TRANSIENT_ATTEMPTS:
                    break
                wait = exc.retry_after if exc.retry_after is not None else delay
                await asyncio.sleep(min(BACKOFF_CAP, wait) * (1 + random.random() / 2))  # noqa: S311
                delay *= 2
        raise TryAgain("Feishu is busy or unreachable right now; please try again shortly")
