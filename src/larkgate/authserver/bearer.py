"""Credentials on the MCP endpoints: who a request speaks for, and which sessions it may use.

A credential is a LarkGate access token (``Authorization: Bearer``, issued by this gateway's
token endpoint for this resource) or a personal access key (the same header, or ``?key=`` for
clients that cannot set headers). Feishu tokens never appear here.

A session opened with a credential is bound to its user from the first message. A credential
of another user on that session gets the same 404 as an unknown session: to its holder that
session does not exist, and the answer tells nobody which session ids are live. A session bound
through the Authorization header needs a credential on every later request too (MCP requires
it; a leaked session id alone is then worth nothing). The one exception is an HTTP+SSE session
opened with ``?key=``: its message endpoint URL, chosen by the gateway, carries no key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from .. import errors
from ..clock import Clock
from ..config import EndpointAuth, Settings
from ..store import Store, digest
from ..transports.common import Rejected, http_error
from ..transports.sessions import Session, SessionTable
from ..userkey import user_key
from .grants import GrantStore
from .keystore import KeyStore
from .metadata import SCOPE, Resources
from .ratelimit import RateLimiter
from .tokens import ACCESS_PREFIX, KEY_PREFIX
from .web import client_address

log = logging.getLogger(__name__)

# A key's last use is shown to the minute; writing it on every request would cost a disk
# write per message for nothing.
KEY_TOUCH_INTERVAL = 60.0
UNKNOWN = "unknown credential"


@dataclass(frozen=True)
class Credential:
    user_id: str
    kind: str  # "token" or "key"
    label: str  # client id or key id, for log lines
    in_header: bool


class EndpointGuard:
    def __init__(
        self,
        settings: Settings,
        grants: GrantStore,
        keys: KeyStore,
        store: Store,
        resources: Resources,
        *,
        limiter: RateLimiter,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._grants = grants
        self._keys = keys
        self._store = store
        self._resources = resources
        self._limiter = limiter
        self._clock = clock
        self._key_touched: dict[str, float] = {}

    def _mode(self, endpoint: str) -> EndpointAuth:
        return self._settings.sse_auth if endpoint == "sse" else self._settings.mcp_auth

    def authenticate(self, request: Request, endpoint: str) -> Credential | None:
        """The request's credential; None when it has none and the endpoint lets it in.

        ``endpoint`` is ``mcp``, ``sse`` or ``messages``. Raises Rejected with a 401 (and the
        challenge OAuth clients start their login from), a 400 or a 429.
        """
        header = request.headers.get("authorization")
        key = request.query_params.get("key")
        if header is None and key is None:
            if endpoint != "messages" and self._mode(endpoint) is EndpointAuth.OAUTH:
                raise Rejected(self._challenge(endpoint, None, "this endpoint needs a login"))
            return None
        if header is not None and key is not None:
            raise Rejected(
                http_error(
                    400, errors.INVALID_CREDENTIAL, "send the credential in one place, not two"
                )
            )
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            secret, in_header = value.strip(), True
            if scheme.lower() != "bearer" or not secret:
                raise Rejected(self._challenge(endpoint, "invalid_request", "use Bearer"))
        else:
            secret, in_header = key or "", False
        verdict = self._verify(secret, endpoint, in_header)
        if isinstance(verdict, Credential):
            return verdict
        address = client_address(request)
        # Only unknown credentials count: an expired token is a real client that must get its
        # 401 to renew, and guessing a 256-bit secret is hopeless anyway; the limit keeps a
        # scanner from filling the log.
        if verdict == UNKNOWN and not self._limiter.allow("bearer", address):
            raise Rejected(
                http_error(
                    429,
                    errors.RATE_LIMITED,
                    "too many unknown credentials from this address",
                    **{"Retry-After": str(self._limiter.retry_after)},
                )
            )
        log.info("refused a credential on /%s from %s: %s", endpoint, address, verdict)
        raise Rejected(self._challenge(endpoint, "invalid_token", verdict))

    def _verify(self, secret: str, endpoint: str, in_header: bool) -> Credential | str:
        """The credential, or why not (the error_description sent back)."""
        if secret.startswith(KEY_PREFIX):
            owner = self._keys.key_owner(secret)
            if owner is None:
                return UNKNOWN
            key_id, user_id = owner
            self._touch_key(key_id)
            return Credential(user_id, "key", key_id, in_header)
        if not secret.startswith(ACCESS_PREFIX):
            return UNKNOWN
        if not in_header:
            # OAuth 2.1 drops RFC 6750's URL query method; only personal keys go in URLs.
            return "access tokens go in the Authorization header"
        token = self._grants.access_token_owner(secret)
        if token is None:
            return UNKNOWN
        if token.expires_at <= self._clock.now():
            return "the access token expired"
        if not self._resources.accepts(token.audience, endpoint):
            return "the access token was issued for another resource"
        return Credential(token.user_id, "token", token.client_id, in_header)

    def _touch_key(self, key_id: str) -> None:
        now = self._clock.now()
        if now - self._key_touched.get(key_id, float("-inf")) >= KEY_TOUCH_INTERVAL:
            self._key_touched[key_id] = now
            self._keys.touch_key(key_id, now)

    def _challenge(self, endpoint: str, error: str | None, message: str) -> Response:
        params = [f'resource_metadata="{self._resources.metadata_url(endpoint)}"']
        params.append(f'scope="{SCOPE}"')
        if error is not None:
            params.insert(0, f'error="{error}", error_description="{message}"')
        code = errors.CREDENTIAL_REQUIRED if error is None else errors.INVALID_CREDENTIAL
        return http_error(
            401, code, message, **{"WWW-Authenticate": "Bearer " + ", ".join(params)}
        )

    # -- sessions --------------------------------------------------------------------------

    def open_session(
        self,
        sessions: SessionTable,
        transport: str,
        session_id: str,
        credential: Credential | None,
    ) -> Session:
        """A new session, bound to the credential's user from its first message."""
        user_id = credential.user_id if credential else None
        session = sessions.create(transport, session_id, user_id)
        if credential is not None:
            self._remember(session_id, transport, credential)
        return session

    def admit(self, session: Session, credential: Credential | None, endpoint: str) -> None:
        """Let a request into an existing session, or raise Rejected (404 or 401)."""
        if credential is None:
            if self._keys.session_needs_credential(session.session_id):
                raise Rejected(self._challenge(endpoint, None, "this session needs its login"))
            return
        if session.user_id is None:
            # A session opened without a login: the first credential it sees binds it, unless
            # a login through its link bound it to someone else a moment ago.
            if not self._store.bind_session(digest(session.session_id), credential.user_id):
                raise Rejected(http_error(404, errors.UNKNOWN_SESSION, "unknown or ended session"))
            session.user_id = credential.user_id
            self._remember(session.session_id, session.transport, credential)
            log.info(
                "session bound to user %s by a %s", user_key(credential.user_id), credential.kind
            )
            return
        if session.user_id != credential.user_id:
            log.warning(
                "user %s presented a credential on another user's session; answered 404",
                user_key(credential.user_id),
            )
            raise Rejected(http_error(404, errors.UNKNOWN_SESSION, "unknown or ended session"))

    def _remember(self, session_id: str, transport: str, credential: Credential) -> None:
        # An SSE session's message URL is the gateway's and never carries ?key=.
        needs = credential.in_header or transport != "sse"
        self._keys.bind_session_credential(session_id, credential.user_id, needs)
