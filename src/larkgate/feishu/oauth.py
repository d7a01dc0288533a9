"""Feishu/Lark OAuth: the authorize URL, code exchange, refresh and user_info.

Every answer is classified once, here: success; a passing failure worth retrying (network,
timeouts, 5xx, 20050, 20072, 429); a refusal that is the gateway's own fault (its app
credentials or redirect URL, which no new login of the user would fix); or a refusal of the
user's grant, which needs the user again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import httpx

from ..clock import Clock
from ..config import Settings
from ..store import Tokens
from .budget import CallBudget, Priority

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset({20050, 20072, 99991400})
REDIRECT_MISMATCH_CODES = frozenset({20029, 20071})
# Refusals caused by how the gateway is set up or calls: invalid request, invalid client
# (app id/secret), unsupported grant type, redirect_uri mismatch. The user's grant is fine.
GATEWAY_CODES = frozenset({20001, 20002, 20024}) | REDIRECT_MISMATCH_CODES
RATE_LIMIT_RESET_HEADER = "x-ogw-ratelimit-reset"
OFFLINE_ACCESS = "offline_access"
# Feishu documents these lifetimes; used only if an answer leaves the field out.
DOCUMENTED_ACCESS_LIFETIME = 7200.0
DOCUMENTED_REFRESH_LIFETIME = 604800.0
SCOPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
MAX_EXTRA_SCOPES = 32


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    GATEWAY = "gateway"
    USER = "user"


class FeishuError(Exception):
    """Feishu refused or could not be reached; ``kind`` says what can be done about it."""

    def __init__(
        self,
        message: str,
        *,
        kind: FailureKind,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.kind is FailureKind.TRANSIENT

    @property
    def redirect_mismatch(self) -> bool:
        return self.code in REDIRECT_MISMATCH_CODES


@dataclass(frozen=True)
class TokenGrant:
    """A token answer; expiry times are local clock readings, never Feishu's timestamps."""

    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float
    scope: str
    obtained_at: float

    def as_tokens(self, authorized_at: float) -> Tokens:
        return Tokens(
            access_token=self.access_token,
            access_expires_at=self.access_expires_at,
            refresh_token=self.refresh_token,
            refresh_expires_at=self.refresh_expires_at,
            scope=self.scope,
            authorized_at=authorized_at,
            obtained_at=self.obtained_at,
        )


@dataclass(frozen=True)
class FeishuUser:
    open_id: str
    union_id: str
    tenant_key: str
    name: str


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def parse_scopes(text: str) -> list[str]:
    """Scope names from a space- or comma-separated list; ValueError names a bad one."""
    names = [n for n in re.split(r"[\s,]+", text.strip()) if n]
    if len(names) > MAX_EXTRA_SCOPES:
        raise ValueError(f"at most {MAX_EXTRA_SCOPES} scopes")
    for name in names:
        if not SCOPE_NAME.fullmatch(name):
            raise ValueError(f"{name[:40]!r} is not a scope name")
    return list(dict.fromkeys(names))


class FeishuOAuth:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        clock: Clock,
        budget: CallBudget | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self.budget = budget or CallBudget.from_settings(settings)

    def scopes(self, extra: Sequence[str] = ()) -> list[str]:
        """The configured scopes plus ``extra``, each once, offline_access once at the end."""
        wanted = [s for s in (*self._settings.oauth_scopes, *extra) if s != OFFLINE_ACCESS]
        return [*dict.fromkeys(wanted), OFFLINE_ACCESS]

    def authorize_url(
        self, state: str, code_challenge: str, extra_scopes: Sequence[str] = ()
    ) -> str:
        s = self._settings
        query = urlencode(
            {
                "client_id": s.app_id,
                "response_type": "code",
                "redirect_uri": s.redirect_uri,
                "scope": " ".join(self.scopes(extra_scopes)),
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{s.authorize_url}?{query}"

    async def exchange_code(self, code: str, verifier: str) -> TokenGrant:
        return await self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                # The same settings value the authorize URL carried, so the two are identical.
                "redirect_uri": self._settings.redirect_uri,
                "code_verifier": verifier,
            },
            Priority(background=False),
        )

    async def refresh(self, refresh_token: str, priority: Priority) -> TokenGrant:
        if not refresh_token:
            raise ValueError("refresh() needs a refresh token")
        s = self._settings
        # Feishu spends the refresh token even if we stop listening, so a slow answer is
        # waited for (callers are answered meanwhile, see the keeper) rather than given up.
        patient = httpx.Timeout(
            s.feishu_timeout, read=max(s.feishu_timeout, s.refresh_answer_wait)
        )
        return await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, priority, patient
        )

    async def user_info(self, access_token: str) -> FeishuUser:
        url = f"{self._settings.open_base_url}/open-apis/authen/v1/user_info"
        await self.budget.acquire(Priority(background=False))
        body = await self._call("GET", url, headers={"Authorization": f"Bearer {access_token}"})
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        open_id = data.get("open_id")
        if not isinstance(open_id, str) or not open_id:
            raise FeishuError("user_info answered without an open_id", kind=FailureKind.TRANSIENT)
        return FeishuUser(
            open_id=open_id,
            union_id=str(data.get("union_id", "")),
            tenant_key=str(data.get("tenant_key", "")),
            name=str(data.get("name", "")),
        )

    async def _token_call(
        self,
        fields: dict[str, str],
        priority: Priority,
        timeout: httpx.Timeout | float | None = None,
    ) -> TokenGrant:
        s = self._settings
        payload = {
            "client_id": s.app_id,
            "client_secret": s.app_secret.get_secret_value(),
            **fields,
        }
        await self.budget.acquire(priority)
        # Lifetimes count from the local clock when we asked: Feishu issued the token no
        # earlier, so a slow answer can only make us refresh a little early, never late.
        asked_at = self._clock.now()
        body = await self._call("POST", s.token_url, json=payload, timeout=timeout)
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise FeishuError("token answer carried no access_token", kind=FailureKind.TRANSIENT)
        refresh = body.get("refresh_token")
        # Decide by the field's presence, not by the scope string: no (or an empty) refresh
        # token means this login cannot be renewed, and nothing empty is ever stored as one.
        refresh = refresh if isinstance(refresh, str) and refresh else ""
        return TokenGrant(
            access_token=access,
            access_expires_at=asked_at + _seconds(body, "expires_in", DOCUMENTED_ACCESS_LIFETIME),
            refresh_token=refresh,
            refresh_expires_at=(
                asked_at + _seconds(body, "refresh_token_expires_in", DOCUMENTED_REFRESH_LIFETIME)
                if refresh
                else 0.0
            ),
            scope=str(body.get("scope", "")),
            obtained_at=asked_at,
        )

    async def _call(
        self,
        method: str,
        url: str,
        timeout: httpx.Timeout | float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, url, timeout=timeout or self._settings.feishu_timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise FeishuError(
                f"Feishu unreachable: {type(exc).__name__}", kind=FailureKind.TRANSIENT
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = body.get("code")
        if response.status_code == 200 and code in (0, None):
            return body
        raise self._refusal(response, body)

    def _refusal(self, response: httpx.Response, body: dict[str, Any]) -> FeishuError:
        code = body.get("code") if isinstance(body.get("code"), int) else None
        description = str(body.get("error_description") or body.get("msg") or "")
        status = response.status_code
        if code in TRANSIENT_CODES or status == 429:
            kind = FailureKind.TRANSIENT
        elif code in GATEWAY_CODES:
            kind = FailureKind.GATEWAY
        elif status >= 500:
            # Feishu's own trouble; a verdict on the user's grant comes as a 4xx.
            kind = FailureKind.TRANSIENT
        else:
            kind = FailureKind.USER
        retry_after = _reset_seconds(response)
        if status == 429 or code == 99991400:
            self.budget.pause(retry_after if retry_after is not None else 1.0)
        log.debug("Feishu answered HTTP %d code %s (%s)", status, code, kind)
        return FeishuError(
            f"Feishu answered HTTP {status} code {code}: {description[:200]}",
            kind=kind,
            code=code,
            status=status,
            retry_after=retry_after,
        )


def _seconds(body: dict[str, Any], name: str, documented: float) -> float:
    value = body.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    log.warning(
        "token answer without a valid %s; assuming Feishu's documented %s", name, documented
    )
    return documented


def _reset_seconds(response: httpx.Response) -> float | None:
    reset = response.headers.get(RATE_LIMIT_RESET_HEADER) or response.headers.get("retry-after")
    if reset is None:
        return None
    try:
        return max(0.0, float(reset))
    except ValueError:
        return None
