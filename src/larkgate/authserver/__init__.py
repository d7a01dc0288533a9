"""LarkGate as its own OAuth 2.1 authorization server, and personal access keys.

MCP clients that do OAuth discover the gateway (RFC 9728, RFC 8414), register (RFC 7591),
send the user through a consent page and the Feishu login, and get short-lived LarkGate tokens
for the gateway's own resources. The Feishu tokens never leave the gateway: the MCP
specification forbids passing a third-party token through. Clients that cannot do OAuth use a
personal access key instead. ``EndpointGuard`` checks either credential on ``/mcp``, ``/sse``
and ``/messages`` and keeps every session with the user who opened it.
"""

from __future__ import annotations

from starlette.routing import Route

from ..clock import Clock
from ..config import Settings
from ..login import LoginRoutes
from ..store import Store
from .access_keys import KeysPages
from .authorize import AuthorizeEndpoint
from .bearer import Credential, EndpointGuard
from .db import AuthDb
from .grants import GrantStore
from .keystore import KeyStore
from .metadata import MetadataEndpoints, Resources
from .ratelimit import RateLimiter
from .register import RegistrationEndpoint
from .token_endpoint import TokenEndpoint
from .web import preflight

__all__ = ["AuthServer", "Credential", "EndpointGuard"]


class AuthServer:
    """Every authorization-server part of one gateway, sharing one store and one rate limiter."""

    def __init__(self, settings: Settings, store: Store, login: LoginRoutes, clock: Clock) -> None:
        self._db = AuthDb(store.path)
        grants, keys = GrantStore(self._db), KeyStore(self._db)
        resources = Resources(settings)
        limiter = RateLimiter(settings.auth_rate_limit)
        self.guard = EndpointGuard(
            settings, grants, keys, store, resources, limiter=limiter, clock=clock
        )
        self._metadata = MetadataEndpoints(settings, resources)
        self._register = RegistrationEndpoint(settings, grants, limiter, clock)
        self._authorize = AuthorizeEndpoint(
            settings, grants, resources, limiter, clock=clock, login=login
        )
        self._token = TokenEndpoint(settings, grants, resources, limiter, clock)
        self._key_pages = KeysPages(
            settings, keys, grants, store, limiter=limiter, clock=clock, login=login
        )
        login.follow_ups.extend([self._authorize, self._key_pages])
        login.keys_offer = self._key_pages

    def routes(self) -> list[Route]:
        return [
            *self._metadata.routes(),
            Route("/register", self._register.register, methods=["POST"]),
            Route("/authorize", self._authorize.ask, methods=["GET"]),
            Route("/authorize", self._authorize.decide, methods=["POST"]),
            Route("/token", self._token.token, methods=["POST"]),
            Route("/revoke", self._token.revoke, methods=["POST"]),
            *(Route(path, preflight, methods=["OPTIONS"]) for path in _CORS_PATHS),
            Route("/keys", self._key_pages.show, methods=["GET"]),
            Route("/keys/login", self._key_pages.login, methods=["GET"]),
            Route("/keys/create", self._key_pages.create, methods=["POST"]),
            Route("/keys/revoke", self._key_pages.revoke, methods=["POST"]),
            Route("/keys/disconnect", self._key_pages.disconnect, methods=["POST"]),
            Route("/keys/logout", self._key_pages.logout, methods=["POST"]),
        ]

    def close(self) -> None:
        self._db.close()


# Endpoints a browser-based MCP client calls with fetch (no cookies, so any origin may).
_CORS_PATHS = ("/register", "/token", "/revoke")
