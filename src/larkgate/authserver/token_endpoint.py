"""``/token`` (authorization code with PKCE, refresh with rotation) and ``/revoke`` (RFC 7009).

Clients are public (no secret), so a code is worth nothing without the verifier that matches
its challenge, and a refresh token is single use: the answer brings a new one, and presenting
a used one again revokes the whole grant, since only a copy can be presented twice.
"""

from __future__ import annotations

import base64
import binascii
import logging
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from ..clock import Clock
from ..config import Settings
from ..pages import FormError, read_form
from . import audit
from .grants import GrantStore, IssuedTokens, Redeemed
from .metadata import Resources
from .ratelimit import RateLimiter
from .redirects import sole
from .tokens import verifier_matches
from .web import CORS_HEADERS, client_address, json_answer, oauth_error, rate_limited_json

log = logging.getLogger(__name__)


class TokenEndpoint:
    def __init__(
        self,
        settings: Settings,
        grants: GrantStore,
        resources: Resources,
        limiter: RateLimiter,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._store = grants
        self._resources = resources
        self._limiter = limiter
        self._clock = clock

    async def token(self, request: Request) -> Response:
        address = client_address(request)
        if not self._limiter.allow("token", address):
            return rate_limited_json(self._limiter.retry_after)
        try:
            form = await read_form(request)
            client_id = _client_id(form, request.headers.get("authorization"))
        except FormError as exc:
            return oauth_error(400, "invalid_request", str(exc))
        client = self._store.get_client(client_id) if client_id else None
        if client is None:
            return oauth_error(401, "invalid_client", "unknown client_id")
        resource: str | None = None
        if "resource" in form:
            resource = self._resources.canonical(form["resource"])
            if resource is None:
                return oauth_error(400, "invalid_target", "resource is not this gateway's")

        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            # RFC 6749 section 4.1.3: redirect_uri may be left out only where the
            # authorization request left it out, which needs a single registered one.
            form.setdefault("redirect_uri", sole(client.redirect_uris))
            return self._redeem_code(form, client_id, resource, address)
        if grant_type == "refresh_token":
            return self._rotate(form, client_id, resource, address)
        return oauth_error(
            400, "unsupported_grant_type", "use authorization_code or refresh_token"
        )

    def _redeem_code(
        self, form: dict[str, str], client_id: str, resource: str | None, address: str
    ) -> Response:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        redirect_uri = form.get("redirect_uri", "")
        if not code or not verifier or not redirect_uri:
            return oauth_error(
                400, "invalid_request", "code, code_verifier and redirect_uri are required"
            )
        # The code is spent by this attempt whatever its outcome: a guess at the verifier
        # gets one try, and the rightful client simply starts over.
        grant = self._store.redeem_code(code)
        if grant is Redeemed.REPLAYED:
            audit.record("code replayed; its grant revoked", client=client_id, ip=address)
            return _bad_grant("the code was already used")
        if isinstance(grant, Redeemed):
            return _bad_grant("unknown code")

        now = self._clock.now()
        problem = None
        if grant.expires_at <= now:
            problem = "the code expired"
        elif grant.client_id != client_id:
            problem = "the code was issued to another client"
        elif grant.redirect_uri != redirect_uri:
            problem = "redirect_uri differs from the authorization request's"
        elif not verifier_matches(verifier, grant.code_challenge):
            problem = "code_verifier does not match the code_challenge"
        elif resource is not None and resource != grant.resource:
            return oauth_error(400, "invalid_target", "resource differs from the authorization")
        if problem is not None:
            audit.record(
                "code refused", user_id=grant.user_id, client=client_id, why=problem, ip=address
            )
            return _bad_grant(problem)

        issued = self._store.issue_for_code(
            code,
            grant,
            now=now,
            access_ttl=self._settings.oauth_access_token_ttl,
            refresh_ttl=self._settings.oauth_refresh_token_ttl,
        )
        if issued is None:
            return _bad_grant("the code was already used")
        audit.record(
            "grant issued",
            user_id=issued.user_id,
            client=client_id,
            grant=issued.grant_id,
            resource=grant.resource,
            ip=address,
        )
        return self._tokens(issued)

    def _rotate(
        self, form: dict[str, str], client_id: str, resource: str | None, address: str
    ) -> Response:
        refresh_token = form.get("refresh_token", "")
        if not refresh_token:
            return oauth_error(400, "invalid_request", "refresh_token is required")
        outcome = self._store.refresh(
            refresh_token,
            client_id,
            resource,
            now=self._clock.now(),
            access_ttl=self._settings.oauth_access_token_ttl,
            refresh_ttl=self._settings.oauth_refresh_token_ttl,
        )
        if isinstance(outcome, IssuedTokens):
            audit.record("refresh rotated", user_id=outcome.user_id, grant=outcome.grant_id)
            return self._tokens(outcome)
        why, grant_id = outcome
        if why is Redeemed.REPLAYED:
            audit.record(
                "refresh token replayed; its grant revoked",
                client=client_id,
                grant=grant_id,
                ip=address,
            )
        if why is Redeemed.WRONG_RESOURCE:
            return oauth_error(400, "invalid_target", "resource differs from the grant's")
        return _bad_grant(f"refresh token refused ({why.value})")

    def _tokens(self, issued: IssuedTokens) -> Response:
        return json_answer(
            {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": int(self._settings.oauth_access_token_ttl),
                "refresh_token": issued.refresh_token,
                "scope": issued.scope,
            }
        )

    async def revoke(self, request: Request) -> Response:
        address = client_address(request)
        if not self._limiter.allow("revoke", address):
            return rate_limited_json(self._limiter.retry_after)
        try:
            form = await read_form(request)
            client_id = _client_id(form, request.headers.get("authorization"))
        except FormError as exc:
            return oauth_error(400, "invalid_request", str(exc))
        token = form.get("token", "")
        if not token:
            return oauth_error(400, "invalid_request", "token is required")
        # Holding a token is the right to revoke it; a client_id, when sent, must be its own.
        revoked = self._store.revoke_token(token, client_id or None)
        if revoked is not None:
            kind, grant_id, user_id = revoked
            audit.record(
                f"{kind} token revoked",
                user_id=user_id,
                grant=grant_id,
                client=client_id or None,
                ip=address,
            )
        # RFC 7009 section 2.2: an unknown or already revoked token is answered the same way.
        return Response(status_code=200, headers=CORS_HEADERS)


def _client_id(form: dict[str, str], authorization: str | None) -> str:
    """The client id from the form, or from HTTP Basic for clients that insist on sending it."""
    if "client_id" in form or not authorization:
        return form.get("client_id", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise FormError("only public clients exist here; send client_id in the form")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise FormError("malformed Basic authorization") from None
    return unquote(decoded.partition(":")[0])


def _bad_grant(description: str) -> Response:
    return oauth_error(400, "invalid_grant", description)
