"""Feishu/Lark OAuth: the authorize URL, code exchange, refresh and user_info.

Every call's answer is classified once here: success, a transient failure worth retrying
(network, 20050, 20072, 429), or a terminal refusal that needs the user again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from ..clock import Clock
from ..config import Settings

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset({20050, 20072, 99991400})
REDIRECT_MISMATCH_CODES = frozenset({20029, 20071})
RATE_LIMIT_RESET_HEADER = "x-ogw-ratelimit-reset"


class FeishuError(Exception):
    """Feishu refused or could not be reached. ``transient`` says whether to retry."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.transient = transient
        self.retry_after = retry_after

    @property
    def redirect_mismatch(self) -> bool:
        return self.code in REDIRECT_MISMATCH_CODES


@dataclass(frozen=True)
class TokenGrant:
    """A token answer, with expiry times taken from the local clock when it arrived."""

    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float
    scope: str


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


class FeishuOAuth:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, clock: Clock) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock

    def authorize_url(self, state: str, code_challenge: str) -> str:
        s = self._settings
        query = urlencode(
            {
                "client_id": s.app_id,
                "response_type": "code",
                "redirect_uri": s.redirect_uri,
                "scope": " ".join(s.oauth_scopes),
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
                "redirect_uri": self._settings.redirect_uri,
                "code_verifier": verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenGrant:
        return await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def user_info(self, access_token: str) -> FeishuUser:
        url = f"{self._settings.open_base_url}/open-apis/authen/v1/user_info"
        body = await self._call("GET", url, headers={"Authorization": f"Bearer {access_token}"})
        data = body.get("data") or {}
        open_id = data.get("open_id")
        if not isinstance(open_id, str) or not open_id:
            raise FeishuError("user_info answered without an open_id")
        return FeishuUser(
            open_id=open_id,
            union_id=str(data.get("union_id", "")),
            tenant_key=str(data.get("tenant_key", "")),
            name=str(data.get("name", "")),
        )

    async def _token_call(self, fields: dict[str, str]) -> TokenGrant:
        s = self._settings
        payload = {
            "client_id": s.app_id,
            "client_secret": s.app_secret.get_secret_value(),
            **fields,
        }
        sent_at = self._clock.now()
        body = await self._call("POST", s.token_url, json=payload)
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise FeishuError("token answer carried no access_token", code=body.get("code"))
        refresh = body.get("refresh_token")
        # Decide by the field's presence: an empty or missing one means no refresh is possible.
        refresh = refresh if isinstance(refresh, str) and refresh else ""
        return TokenGrant(
            access_token=access,
            access_expires_at=sent_at + float(body.get("expires_in", 0)),
            refresh_token=refresh,
            refresh_expires_at=(
                sent_at + float(body.get("refresh_token_expires_in", 0)) if refresh else 0.0
            ),
            scope=str(body.get("scope", "")),
        )

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, url, timeout=self._settings.feishu_timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise FeishuError(
                f"Feishu unreachable: {type(exc).__name__}", transient=True
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
        return self._raise(response, body)

    def _raise(self, response: httpx.Response, body: dict[str, Any]) -> dict[str, Any]:
        code = body.get("code") if isinstance(body.get("code"), int) else None
        description = str(body.get("error_description") or body.get("msg") or "")
        status = response.status_code
        transient = code in TRANSIENT_CODES or status == 429 or (status >= 500 and code is None)
        retry_after = None
        reset = response.headers.get(RATE_LIMIT_RESET_HEADER) or response.headers.get(
            "retry-after"
        )
        if reset is not None:
            try:
                retry_after = float(reset)
            except ValueError:
                retry_after = None
        raise FeishuError(
            f"Feishu answered HTTP {status} code {code}: {description[:200]}",
            code=code,
            status=status,
            transient=transient,
            retry_after=retry_after,
        )
