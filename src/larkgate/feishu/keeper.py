"""Keeps each user's Feishu access token current without ever losing the user.

Feishu's refresh tokens are single use: two refreshes racing for one user log that user out,
and so does a refresh whose answer is lost. Hence:

- One refresh per user at a time. Everything that needs one (interactive calls, the background
  renewal, a token Feishu called invalid) joins the same flight. The flight is its own task, so
  a caller that goes away cannot cut it between Feishu's answer and the write.
- The answer is stored (one synced transaction) before its access token is handed out. If the
  write fails, the new tokens stay in memory and are written before anything else is done for
  that user; the dead refresh token is never sent again.
- Passing failures leave the stored tokens alone and are retried with backoff and jitter; an
  access token that is still valid keeps serving meanwhile. A slow answer is waited for in
  the background, since Feishu spends the old refresh token whether or not we listen; callers
  hear "try again" after one call's time and the answer is stored when it comes.
- Only Feishu's verdict on the user's grant asks the user to log in again, with the reason
  kept. A refusal of the gateway's own set-up never does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial

from ..clock import Clock
from ..config import ENV_PREFIX, Settings
from ..crypto import SealError
from ..store import Store, Tokens
from ..userkey import user_key
from .budget import Priority
from .oauth import FailureKind, FeishuError, FeishuOAuth, TokenGrant

log = logging.getLogger(__name__)

# What a failed store write raises; the grant Feishu gave is then held in memory.
STORE_ERRORS = (sqlite3.Error, OSError)
TRY_AGAIN = "Feishu is busy or unreachable right now; your login is fine, please try again shortly"
SAVE_FAILED = (
    "Feishu renewed your login but the gateway could not save it yet; your login is kept and "
    "the next call retries saving it. Please try again shortly"
)
GATEWAY_REFUSED = (
    "Feishu refused the gateway's own app settings (code {code}); your login is kept, and the "
    "operator must check {prefix}APP_ID, {prefix}APP_SECRET and {prefix}TOKEN_URL"
)
UNREADABLE = (
    "your saved Feishu login could not be opened here (it was not sealed for you, or with a "
    "key this gateway has)"
)
NOT_LOGGED_IN = "you have not logged in to Feishu yet"

_jitter = random.SystemRandom()


class NeedsLogin(Exception):
    """The user must log in again; the message says why, for the user, without secrets."""


class TryAgain(Exception):
    """A passing problem; the stored tokens are untouched and a later call may succeed."""


class Why(StrEnum):
    EXPIRING = "expiring"  # the access token is within its margin of expiry
    REJECTED = "rejected"  # Feishu called this access token invalid or expired
    RENEWAL = "renewal"  # the background job keeps an idle refresh token alive


@dataclass(frozen=True)
class _Need:
    why: Why
    rejected_token: str = ""
    horizon: float = 0.0  # RENEWAL: renew a refresh token that expires before this


@dataclass(frozen=True)
class _Landing:
    tokens: Tokens
    tried: bool  # False: the flight found nothing to do for the need it was launched with


@dataclass
class _Flight:
    task: asyncio.Task[_Landing]
    priority: Priority


@dataclass(frozen=True)
class _Unsaved:
    tokens: Tokens
    version: int


class TokenKeeper:
    def __init__(self, settings: Settings, store: Store, oauth: FeishuOAuth, clock: Clock) -> None:
        self._settings = settings
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._flights: dict[str, _Flight] = {}
        self._unsaved: dict[str, _Unsaved] = {}
        self.outcomes: dict[str, int] = {
            "ok": 0,
            "transient": 0,
            "terminal": 0,
            "gateway": 0,
            "unsaved": 0,
        }

    # -- what the router and the renewal job ask -------------------------------------------

    async def access_token(self, user_id: str) -> str:
        """The user's current access token, refreshed first if it is about to expire."""
        tokens, _version = self._stored(user_id)
        if not self._expiring(tokens):
            return tokens.access_token
        landing = await self._renewed(user_id, _Need(Why.EXPIRING), background=False)
        return landing.access_token

    async def refresh_rejected(self, user_id: str, rejected_token: str) -> str:
        """Feishu called ``rejected_token`` invalid: refresh once, unless someone already did."""
        need = _Need(Why.REJECTED, rejected_token=rejected_token)
        return (await self._renewed(user_id, need, background=False)).access_token

    async def renew(self, user_id: str, horizon: float) -> bool:
        """Background: renew the refresh token if it expires before ``horizon``; True if done."""
        tokens, _version = self._stored(user_id)
        need = _Need(Why.RENEWAL, horizon=horizon)
        if not self._applies(need, tokens):
            # The store may not have known the deadline (a record older than the column).
            self._store.note_renewal_deadline(user_id, tokens)
            return False
        fresh = await self._renewed(user_id, need, background=True)
        return fresh.access_token != tokens.access_token

    def flush_unsaved(self) -> int:
        """Try again to store renewals held in memory; returns how many are still held."""
        for user_id in list(self._unsaved):
            try:
                self._store_held(user_id)
            except TryAgain:
                continue
        return len(self._unsaved)

    async def close(self, timeout: float) -> None:
        """Let refreshes in flight land and store what is held, before the gateway stops."""
        tasks = [flight.task for flight in self._flights.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        lost = self.flush_unsaved()
        if lost:
            log.error(
                "%d renewed logins could not be stored and are lost; those users will be asked "
                "to log in again",
                lost,
            )

    # -- reading -----------------------------------------------------------------------------

    def _stored(self, user_id: str) -> tuple[Tokens, int]:
        self._store_held(user_id)
        try:
            record = self._store.token_record(user_id)
        except SealError as exc:
            log.error("stored login of user %s does not open: %s", user_key(user_id), exc)
            raise NeedsLogin(UNREADABLE) from None
        if record is None or record.tokens is None:
            raise NeedsLogin(
                record.needs_login if record and record.needs_login else NOT_LOGGED_IN
            )
        if record.needs_login:
            raise NeedsLogin(record.needs_login)
        return record.tokens, record.version

    def _expiring(self, tokens: Tokens) -> bool:
        # Never let the margin eat more than half a token's life, or short-lived tokens would
        # be refreshed on every call.
        lifetime = (
            tokens.access_expires_at - tokens.obtained_at if tokens.obtained_at else math.inf
        )
        margin = min(self._settings.refresh_margin, lifetime / 2)
        return self._clock.now() >= tokens.access_expires_at - margin

    def _applies(self, need: _Need, tokens: Tokens) -> bool:
        if need.why is Why.EXPIRING:
            return self._expiring(tokens)
        if need.why is Why.REJECTED:
            return tokens.access_token == need.rejected_token
        return tokens.refreshable and tokens.refresh_expires_at <= need.horizon

    # -- the single flight ------------------------------------------------------------------

    async def _renewed(self, user_id: str, need: _Need, *, background: bool) -> Tokens:
        landing: _Landing | None = None
        for _ in range(2):
            flight = self._flights.get(user_id)
            joined = flight is not None
            if flight is None:
                flight = self._launch(user_id, need, background)
            elif not background:
                flight.priority.background = False
            try:
                landing = await self._landing(flight, background)
            except TimeoutError:
                return self._meanwhile(user_id, need)
            # A flight launched for another need may have had nothing to do for ours.
            if not joined or landing.tried or not self._applies(need, landing.tokens):
                return landing.tokens
        assert landing is not None
        return landing.tokens

    async def _landing(self, flight: _Flight, background: bool) -> _Landing:
        """Wait for the flight; an interactive caller only as long as one call to Feishu."""
        waiting = asyncio.shield(flight.task)
        if background:
            return await waiting
        return await asyncio.wait_for(waiting, self._settings.feishu_timeout)

    def _meanwhile(self, user_id: str, need: _Need) -> Tokens:
        """Feishu is slow to answer a refresh. The flight keeps waiting and stores the answer
        when it comes (the old refresh token may be spent already); this caller goes on."""
        tokens, _version = self._stored(user_id)
        if need.why is Why.EXPIRING and self._clock.now() < tokens.access_expires_at:
            return tokens
        log.warning("refresh of user %s still waits for Feishu's answer", user_key(user_id))
        raise TryAgain(TRY_AGAIN)

    def _launch(self, user_id: str, need: _Need, background: bool) -> _Flight:
        priority = Priority(background=background)
        task = asyncio.create_task(
            self._fly(user_id, need, priority), name=f"refresh-{user_key(user_id)}"
        )
        flight = _Flight(task, priority)
        self._flights[user_id] = flight
        task.add_done_callback(partial(self._landed, user_id, flight))
        return flight

    def _landed(self, user_id: str, flight: _Flight, task: asyncio.Task[_Landing]) -> None:
        if self._flights.get(user_id) is flight:
            del self._flights[user_id]
        if not task.cancelled():
            # Every waiter may have gone away; the outcome is logged where it happened.
            task.exception()

    async def _fly(self, user_id: str, need: _Need, priority: Priority) -> _Landing:
        # Read again inside the flight: the previous flight may have refreshed already.
        tokens, version = self._stored(user_id)
        if not self._applies(need, tokens):
            return _Landing(tokens, tried=False)
        if not tokens.refreshable:
            return _Landing(self._unrenewable(user_id, tokens, need), tried=True)
        try:
            grant = await self._ask_feishu(user_id, tokens.refresh_token, priority)
        except FeishuError as exc:
            return _Landing(self._failed(user_id, tokens, need, exc), tried=True)
        return _Landing(self._save(user_id, _with_grant(tokens, grant), version, need), tried=True)

    async def _ask_feishu(
        self, user_id: str, refresh_token: str, priority: Priority
    ) -> TokenGrant:
        s = self._settings
        for attempt in range(1, s.refresh_attempts + 1):
            try:
                return await self._oauth.refresh(refresh_token, priority)
            except FeishuError as exc:
                if not exc.transient:
                    raise
                self.outcomes["transient"] += 1
                if attempt == s.refresh_attempts:
                    raise
                wait = self._backoff(attempt, exc.retry_after)
                log.warning(
                    "refresh of user %s failed for a passing reason (try %d of %d, next in "
                    "%.2fs): %s",
                    user_key(user_id),
                    attempt,
                    s.refresh_attempts,
                    wait,
                    exc,
                )
                await asyncio.sleep(wait)
        raise AssertionError("the loop returns or raises")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self._settings
        delay = min(s.refresh_backoff_cap, s.refresh_backoff * 2.0 ** (attempt - 1))
        # Jitter keeps many users who failed together from coming back together.
        wait = delay * _jitter.uniform(0.5, 1.0)
        return max(wait, retry_after) if retry_after is not None else wait

    # -- outcomes ----------------------------------------------------------------------------

    def _save(self, user_id: str, fresh: Tokens, version: int, need: _Need) -> Tokens:
        try:
            swapped = self._store.replace_tokens(user_id, fresh, version)
        except STORE_ERRORS as exc:
            self._unsaved[user_id] = _Unsaved(fresh, version)
            self.outcomes["unsaved"] += 1
            log.error(
                "user %s: Feishu renewed the login but storing it failed (%s); holding it in "
                "memory and retrying before anything else is done for this user",
                user_key(user_id),
                exc,
            )
            raise TryAgain(SAVE_FAILED) from None
        if not swapped:
            # Only this flight writes a refresh for the user, so a lost swap means a new
            # login replaced the tokens meanwhile; that login is the one to keep.
            log.warning(
                "user %s logged in again during a refresh; keeping that login", user_key(user_id)
            )
            return self._stored(user_id)[0]
        self.outcomes["ok"] += 1
        log.info("refreshed the tokens of user %s (%s)", user_key(user_id), need.why)
        return fresh

    def _store_held(self, user_id: str) -> None:
        held = self._unsaved.get(user_id)
        if held is None:
            return
        try:
            swapped = self._store.replace_tokens(user_id, held.tokens, held.version)
        except STORE_ERRORS as exc:
            log.warning(
                "user %s: the held renewal still cannot be stored (%s)", user_key(user_id), exc
            )
            raise TryAgain(SAVE_FAILED) from None
        del self._unsaved[user_id]
        if swapped:
            log.info("stored the held renewal of user %s", user_key(user_id))
        else:
            log.warning(
                "user %s logged in again while a renewal was held; dropped the renewal",
                user_key(user_id),
            )

    def _unrenewable(self, user_id: str, tokens: Tokens, need: _Need) -> Tokens:
        """No refresh token: the access token is all there is until it ends."""
        if need.why is Why.RENEWAL:
            return tokens
        if need.why is Why.EXPIRING and self._clock.now() < tokens.access_expires_at:
            return tokens
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(tokens.access_expires_at))
        reason = (
            f"your Feishu login ended at {when} and cannot be renewed, because Feishu did not "
            "grant offline access"
        )
        self._store.mark_needs_login(user_id, reason)
        log.info(
            "user %s needs a new login: access token over, no refresh token", user_key(user_id)
        )
        raise NeedsLogin(reason)

    def _failed(self, user_id: str, tokens: Tokens, need: _Need, exc: FeishuError) -> Tokens:
        if exc.kind is FailureKind.TRANSIENT:
            if need.why is Why.EXPIRING and self._clock.now() < tokens.access_expires_at:
                log.warning(
                    "user %s keeps the current access token until Feishu answers a refresh",
                    user_key(user_id),
                )
                return tokens
            raise TryAgain(TRY_AGAIN)
        if exc.kind is FailureKind.GATEWAY:
            self.outcomes["gateway"] += 1
            log.error(
                "Feishu refused the gateway's refresh call for user %s (code %s): check the app "
                "settings; the user's login is kept",
                user_key(user_id),
                exc.code,
            )
            raise TryAgain(GATEWAY_REFUSED.format(code=exc.code, prefix=ENV_PREFIX))

        latest = self._store.token_record(user_id)
        if (
            latest is not None
            and latest.tokens is not None
            and latest.needs_login is None
            and latest.tokens.refresh_token != tokens.refresh_token
        ):
            # Another path (a new login, another gateway process) renewed meanwhile.
            log.info("user %s was renewed elsewhere meanwhile; using that", user_key(user_id))
            return latest.tokens
        reason = _refusal_reason(exc)
        self.outcomes["terminal"] += 1
        self._store.mark_needs_login(user_id, reason)
        log.warning(
            "user %s needs a new login: Feishu refused the refresh (code %s)",
            user_key(user_id),
            exc.code,
        )
        raise NeedsLogin(reason)


def _with_grant(tokens: Tokens, grant: TokenGrant) -> Tokens:
    # An answer without a refresh token ends the chain: the spent one is not kept.
    return replace(
        tokens,
        access_token=grant.access_token,
        access_expires_at=grant.access_expires_at,
        refresh_token=grant.refresh_token,
        refresh_expires_at=grant.refresh_expires_at,
        scope=grant.scope or tokens.scope,
        obtained_at=grant.obtained_at,
    )


def _refusal_reason(exc: FeishuError) -> str:
    """Why the user must log in again, in the user's words; never a token or a description."""
    if exc.code == 20037:
        return (
            "your Feishu login has expired (Feishu keeps a login 7 days without use and 365 days "
            "at most)"
        )
    if exc.code == 20064:
        return "your Feishu login was revoked (you or an administrator withdrew this app's access)"
    if exc.code == 20073:
        return (
            "Feishu's answer to a renewal of your login was lost (a network failure, or the "
            "gateway stopping before it could save it), and Feishu allows each renewal only once"
        )
    if exc.code == 20026:
        return "Feishu no longer recognises your login"
    return f"Feishu refused to renew your login (code {exc.code})"
