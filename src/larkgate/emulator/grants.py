"""Codes, grants and tokens, with Feishu's rules for issuing, rotating and expiring them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from enum import Enum

from .clock import Clock
from .config import EmulatorConfig
from .errors import OAuthCode, OAuthError

logger = logging.getLogger(__name__)

OFFLINE_ACCESS = "offline_access"
_VERIFIER_SHAPE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def fingerprint(secret: str) -> str:
    """A short, one-way name for a token or code that is safe to log and record."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def split_scope(scope: str) -> tuple[str, ...]:
    """Scopes in request order, each once, as Feishu echoes them."""
    return tuple(dict.fromkeys(scope.split()))


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    code_challenge: str | None
    challenge_method: str | None
    open_id: str
    expires_at: float
    used: bool = False


@dataclass
class Grant:
    """One login of one user: the chain of tokens that refreshes descend from."""

    grant_id: str
    open_id: str
    scope: tuple[str, ...]
    authorized_at: float
    access_token: str
    refresh_token: str | None
    refresh_count: int = 0


@dataclass
class AccessToken:
    token: str
    grant_id: str
    open_id: str
    expires_at: float
    superseded_at: float | None = None
    revoked: bool = False


class RefreshState(Enum):
    LIVE = "live"
    USED = "used"
    REVOKED = "revoked"


@dataclass
class RefreshToken:
    token: str
    grant_id: str
    expires_at: float
    state: RefreshState = RefreshState.LIVE


class AccessStatus(Enum):
    LIVE = "live"
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class IssuedTokens:
    open_id: str
    access_token: str
    expires_in: int
    refresh_token: str | None
    refresh_token_expires_in: int | None
    scope: tuple[str, ...]


@dataclass(frozen=True)
class CodeRequest:
    """The token-endpoint fields of an authorization_code exchange."""

    code: str
    client_id: str
    redirect_uri: str | None
    code_verifier: str | None
    reject_unrequested_verifier: bool


class GrantBook:
    """All user authorizations of the emulated app; safe to use from several threads."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._codes: dict[str, AuthCode] = {}
        self._grants: dict[str, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}

    def reset(self) -> None:
        with self._lock:
            self._codes.clear()
            self._grants.clear()
            self._access.clear()
            self._refresh.clear()

    def issue_code(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        scope: tuple[str, ...],
        code_challenge: str | None,
        challenge_method: str | None,
        open_id: str,
    ) -> str:
        code = secrets.token_hex(16)
        with self._lock:
            self._codes[code] = AuthCode(
                client_id=client_id,
                redirect_uri=redirect_uri,
                scope=scope,
                code_challenge=code_challenge,
                challenge_method=challenge_method,
                open_id=open_id,
                expires_at=self._clock.now() + self._config.code_ttl,
            )
        logger.info("code issued for user=%s scope=%s", open_id, " ".join(scope))
        return code

    def code_owner(self, code: str) -> str | None:
        with self._lock:
            found = self._codes.get(code)
            return found.open_id if found else None

    def refresh_owner(self, refresh_token: str) -> str | None:
        with self._lock:
            found = self._refresh.get(refresh_token)
            return self._grants[found.grant_id].open_id if found else None

    def exchange_code(self, request: CodeRequest) -> IssuedTokens:
        with self._lock:
            found = self._codes.get(request.code)
            if found is None:
                raise OAuthError(OAuthCode.CODE_NOT_FOUND, "authorization code not found")
            if found.used:
                raise OAuthError(OAuthCode.CODE_NOT_FOUND, "authorization code already used")
            if found.client_id != request.client_id:
                raise OAuthError(OAuthCode.CODE_NOT_FOUND, "authorization code not found")
            # A code is spent by any attempt that names it, so a wrong verifier cannot be retried.
            found.used = True
            if self._clock.now() >= found.expires_at:
                raise OAuthError(OAuthCode.CODE_EXPIRED, "authorization code expired")
            if request.redirect_uri != found.redirect_uri:
                raise OAuthError(
                    OAuthCode.REDIRECT_URI_MISMATCH,
                    "redirect_uri does not match the one given at authorize",
                )
            _verify_pkce(found, request)
            return self._start_grant(found.open_id, found.scope)

    def refresh(self, refresh_token: str) -> IssuedTokens:
        with self._lock:
            found = self._refresh.get(refresh_token)
            if found is None:
                raise OAuthError(OAuthCode.REFRESH_TOKEN_INVALID, "refresh token is invalid")
            if found.state is RefreshState.REVOKED:
                raise OAuthError(OAuthCode.REFRESH_TOKEN_REVOKED, "refresh token has been revoked")
            if found.state is RefreshState.USED:
                raise OAuthError(
                    OAuthCode.REFRESH_TOKEN_USED, "refresh token has already been used"
                )
            grant = self._grants[found.grant_id]
            now = self._clock.now()
            if now >= found.expires_at:
                raise OAuthError(OAuthCode.REFRESH_TOKEN_EXPIRED, "refresh token has expired")
            if now >= grant.authorized_at + self._config.authorization_max_age:
                raise OAuthError(
                    OAuthCode.REFRESH_TOKEN_EXPIRED, "authorization is older than its maximum age"
                )

            found.state = RefreshState.USED
            for access in self._access.values():
                if access.grant_id == grant.grant_id and access.superseded_at is None:
                    access.superseded_at = now
            grant.refresh_count += 1
            issued = self._issue_pair(grant, now)
        logger.info("refresh rotated for user=%s count=%d", grant.open_id, grant.refresh_count)
        return issued

    def check_access(self, token: str) -> tuple[AccessStatus, AccessToken | None]:
        with self._lock:
            found = self._access.get(token)
            if found is None:
                return AccessStatus.UNKNOWN, None
            if found.revoked:
                return AccessStatus.REVOKED, found
            now = self._clock.now()
            grace_end = (
                found.superseded_at + self._config.old_token_grace
                if found.superseded_at is not None
                else found.expires_at
            )
            if now >= min(found.expires_at, grace_end):
                return AccessStatus.EXPIRED, found
            return AccessStatus.LIVE, found

    def scope_of(self, grant_id: str) -> tuple[str, ...]:
        with self._lock:
            return self._grants[grant_id].scope

    def revoke_user(self, open_id: str) -> int:
        """Kill every token of the user; returns how many grants were touched."""
        with self._lock:
            grant_ids = {g.grant_id for g in self._grants.values() if g.open_id == open_id}
            for access in self._access.values():
                if access.grant_id in grant_ids:
                    access.revoked = True
            for refresh in self._refresh.values():
                if refresh.grant_id in grant_ids:
                    refresh.state = RefreshState.REVOKED
        logger.info("revoked %d grants of user=%s", len(grant_ids), open_id)
        return len(grant_ids)

    def describe_user(self, open_id: str) -> dict[str, object]:
        """The user's live tokens, newest grant first; for tests, never for logs."""
        with self._lock:
            grants = sorted(
                (g for g in self._grants.values() if g.open_id == open_id),
                key=lambda g: g.authorized_at,
                reverse=True,
            )
            described = [self._describe_grant(g) for g in grants]
        newest = described[0] if described else {}
        return {
            "open_id": open_id,
            "access_token": newest.get("access_token"),
            "refresh_token": newest.get("refresh_token"),
            "refresh_count": sum(g.refresh_count for g in grants),
            "grants": described,
        }

    def _describe_grant(self, grant: Grant) -> dict[str, object]:
        access_status, access = self.check_access(grant.access_token)
        refresh = self._refresh.get(grant.refresh_token) if grant.refresh_token else None
        refresh_live = (
            refresh is not None
            and refresh.state is RefreshState.LIVE
            and self._clock.now() < refresh.expires_at
        )
        return {
            "grant_id": grant.grant_id,
            "scope": " ".join(grant.scope),
            "authorized_at": grant.authorized_at,
            "refresh_count": grant.refresh_count,
            "access_token": grant.access_token if access_status is AccessStatus.LIVE else None,
            "access_expires_at": access.expires_at if access else None,
            "refresh_token": grant.refresh_token if refresh_live else None,
            "refresh_expires_at": refresh.expires_at if refresh else None,
        }

    def _start_grant(self, open_id: str, requested: tuple[str, ...]) -> IssuedTokens:
        offline = OFFLINE_ACCESS in requested and self._config.grant_offline_access
        scope = requested if offline else tuple(s for s in requested if s != OFFLINE_ACCESS)
        now = self._clock.now()
        grant = Grant(
            grant_id=secrets.token_hex(8),
            open_id=open_id,
            scope=scope,
            authorized_at=now,
            access_token="",
            refresh_token=None,
        )
        self._grants[grant.grant_id] = grant
        logger.info("grant started for user=%s offline=%s", open_id, offline)
        return self._issue_pair(grant, now)

    def _issue_pair(self, grant: Grant, now: float) -> IssuedTokens:
        config = self._config
        access = AccessToken(
            token="u-" + secrets.token_urlsafe(32),
            grant_id=grant.grant_id,
            open_id=grant.open_id,
            expires_at=now + config.access_token_ttl,
        )
        self._access[access.token] = access
        grant.access_token = access.token

        refresh_token: str | None = None
        refresh_expires_in: int | None = None
        # Turning offline access off at runtime ends the chain at the next refresh.
        if OFFLINE_ACCESS in grant.scope and config.grant_offline_access:
            authorization_end = grant.authorized_at + config.authorization_max_age
            expires_at = min(now + config.refresh_token_ttl, authorization_end)
            refresh = RefreshToken("ur-" + secrets.token_urlsafe(32), grant.grant_id, expires_at)
            self._refresh[refresh.token] = refresh
            refresh_token = refresh.token
            refresh_expires_in = int(expires_at - now)
        grant.refresh_token = refresh_token

        return IssuedTokens(
            open_id=grant.open_id,
            access_token=access.token,
            expires_in=config.access_token_ttl,
            refresh_token=refresh_token,
            refresh_token_expires_in=refresh_expires_in,
            scope=grant.scope,
        )


def _verify_pkce(found: AuthCode, request: CodeRequest) -> None:
    verifier = request.code_verifier
    if found.code_challenge is None:
        if verifier is not None and request.reject_unrequested_verifier:
            raise OAuthError(
                OAuthCode.PKCE_FAILED, "code_verifier sent but no code_challenge at authorize"
            )
        return
    if verifier is None:
        raise OAuthError(OAuthCode.PKCE_FAILED, "code_verifier is required")
    if not _VERIFIER_SHAPE.fullmatch(verifier):
        raise OAuthError(OAuthCode.PKCE_FAILED, "code_verifier is malformed")
    if found.challenge_method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    else:
        computed = verifier
    if not hmac.compare_digest(computed, found.code_challenge):
        raise OAuthError(OAuthCode.PKCE_FAILED, "code_verifier does not match code_challenge")
