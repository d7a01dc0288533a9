"""``/register``: dynamic client registration (RFC 7591) for public clients only.

Anyone may register, as the MCP specification expects, so a registration grants nothing by
itself: it records a display name and where codes may be sent. Every client is public
(``token_endpoint_auth_method: none``); a request for a secret-based method is answered with
``none`` (RFC 7591 section 3.2.1 lets the server replace requested values). Clients that never
complete a login are forgotten after a while, so registrations cannot pile up for ever.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..clock import Clock
from ..config import Settings
from ..pages import MAX_FORM_BYTES
from . import audit
from .grants import GrantStore
from .ratelimit import RateLimiter
from .redirects import MAX_REDIRECT_URIS, RedirectRefused, check_registrable, is_loopback
from .web import client_address, json_answer, oauth_error, rate_limited_json

log = logging.getLogger(__name__)

GRANT_TYPES = ("authorization_code", "refresh_token")
MAX_NAME_LENGTH = 100
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class RegistrationEndpoint:
    def __init__(
        self, settings: Settings, grants: GrantStore, limiter: RateLimiter, clock: Clock
    ) -> None:
        self._settings = settings
        self._store = grants
        self._limiter = limiter
        self._clock = clock

    async def register(self, request: Request) -> Response:
        address = client_address(request)
        if not self._limiter.allow("register", address):
            return rate_limited_json(self._limiter.retry_after)
        body = await _json_object(request)
        if body is None:
            return oauth_error(400, "invalid_client_metadata", "body must be a JSON object")
        try:
            redirect_uris = self._redirect_uris(body.get("redirect_uris"))
        except RedirectRefused as exc:
            return oauth_error(400, "invalid_redirect_uri", str(exc))
        problem = _metadata_problem(body)
        if problem is not None:
            return oauth_error(400, "invalid_client_metadata", problem)

        name = _UNPRINTABLE.sub("", str(body.get("client_name") or "")).strip()
        name = name[:MAX_NAME_LENGTH]
        client = self._store.add_client(
            name, redirect_uris, self._clock.now(), self._settings.oauth_unused_client_ttl
        )
        audit.record(
            "client registered",
            client=client.client_id,
            name=name,
            redirects=",".join(sorted({_kind(u) for u in redirect_uris})),
            ip=address,
        )
        return json_answer(
            {
                "client_id": client.client_id,
                "client_id_issued_at": int(client.created_at),
                "client_name": name,
                "redirect_uris": redirect_uris,
                "grant_types": list(GRANT_TYPES),
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
            status=201,
        )

    def _redirect_uris(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise RedirectRefused("redirect_uris must be a non-empty list")
        if len(value) > MAX_REDIRECT_URIS:
            raise RedirectRefused(f"at most {MAX_REDIRECT_URIS} redirect_uris")
        if not all(isinstance(uri, str) for uri in value):
            raise RedirectRefused("redirect_uris must be strings")
        schemes = self._settings.oauth_redirect_schemes
        return list(dict.fromkeys(check_registrable(uri, schemes) for uri in value))


async def _json_object(request: Request) -> dict[str, Any] | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _metadata_problem(body: dict[str, Any]) -> str | None:
    grant_types = body.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not set(grant_types) <= set(GRANT_TYPES):
        return "grant_types may only be authorization_code and refresh_token"
    if "authorization_code" not in grant_types:
        return "grant_types must include authorization_code"
    response_types = body.get("response_types", ["code"])
    if response_types != ["code"]:
        return "response_types must be [code]"
    if not isinstance(body.get("client_name", ""), str | None):
        return "client_name must be a string"
    return None


def _kind(uri: str) -> str:
    """How a redirect URI is described in the audit line: no paths, no queries."""
    if is_loopback(uri):
        return "loopback"
    scheme, _, rest = uri.partition(":")
    return scheme if scheme != "https" else "https://" + rest.lstrip("/").split("/")[0]
