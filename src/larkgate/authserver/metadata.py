"""Discovery: protected-resource metadata (RFC 9728) and authorization server metadata (RFC 8414).

The gateway is both the protected resource and its authorization server, so the issuer is the
public URL exactly as configured (clients compare it as a string). Each MCP endpoint is a
resource of its own, ``<public>/mcp`` and ``<public>/sse``; the public URL itself names the
gateway as a whole. A token carries one of these as its audience and works only where it fits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import Settings
from .web import json_answer, preflight

SCOPE = "mcp"
OFFLINE_SCOPE = "offline_access"
PRM_PATH = "/.well-known/oauth-protected-resource"
ASM_PATH = "/.well-known/oauth-authorization-server"
# The endpoint a resource names: /messages belongs to the /sse resource.
_RESOURCE_OF = {"mcp": "mcp", "sse": "sse", "messages": "sse"}


def granted_scope(requested: str) -> str:
    """What a grant covers: always the tools (``mcp``); unknown scopes are ignored."""
    asked = requested.split()
    return " ".join([SCOPE, *([OFFLINE_SCOPE] if OFFLINE_SCOPE in asked else [])])


class Resources:
    """The gateway's URLs as a protected resource and as an authorization server."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.public_url
        self.prefix = urlsplit(settings.public_url).path
        self.by_name = {name: f"{self.issuer}/{name}" for name in ("mcp", "sse")}

    def of_endpoint(self, endpoint: str) -> str:
        return self.by_name[_RESOURCE_OF[endpoint]]

    def metadata_url(self, endpoint: str) -> str:
        public = urlsplit(self.issuer)
        path = f"{PRM_PATH}{self.prefix}/{_RESOURCE_OF[endpoint]}"
        return urlunsplit((public.scheme, public.netloc, path, "", ""))

    def canonical(self, resource: str) -> str | None:
        """Our own spelling of a resource a client named, or None when it is not ours."""
        parts = urlsplit(resource)
        if parts.query or parts.fragment or "#" in resource:
            return None
        normal = urlunsplit(
            (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", "")
        )
        for ours in (self.issuer, *self.by_name.values()):
            own = urlsplit(ours)
            if normal == urlunsplit(
                (own.scheme.lower(), own.netloc.lower(), own.path.rstrip("/"), "", "")
            ):
                return ours
        return None

    def accepts(self, audience: str, endpoint: str) -> bool:
        return audience in (self.issuer, self.of_endpoint(endpoint))


class MetadataEndpoints:
    def __init__(self, settings: Settings, resources: Resources) -> None:
        self._settings = settings
        self._resources = resources

    def routes(self) -> list[Route]:
        prefix = self._resources.prefix
        # Clients build these paths from the issuer (RFC 8414 section 3.1) or the resource
        # (RFC 9728 section 3.1): served at both spellings when the public URL has a path.
        prm_paths = {PRM_PATH: self._resources.issuer}
        for name, resource in self._resources.by_name.items():
            prm_paths[f"{PRM_PATH}{prefix}/{name}"] = resource
            prm_paths[f"{PRM_PATH}/{name}"] = resource
        routes = [
            Route(path, self._protected_resource(resource), methods=["GET"])
            for path, resource in prm_paths.items()
        ]
        for path in {ASM_PATH, f"{ASM_PATH}{prefix}"}:
            routes.append(Route(path, self.authorization_server, methods=["GET"]))
        for path in [*prm_paths, ASM_PATH]:
            routes.append(Route(path, preflight, methods=["OPTIONS"]))
        return routes

    def _protected_resource(self, resource: str) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            return json_answer(
                {
                    "resource": resource,
                    "authorization_servers": [self._resources.issuer],
                    "scopes_supported": [SCOPE],
                    "bearer_methods_supported": ["header"],
                    "resource_name": "LarkGate: Feishu/Lark tools acting as you",
                }
            )

        return answer

    async def authorization_server(self, request: Request) -> Response:
        issuer = self._resources.issuer
        return json_answer(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "registration_endpoint": f"{issuer}/register",
                "revocation_endpoint": f"{issuer}/revoke",
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": [SCOPE, OFFLINE_SCOPE],
                "authorization_response_iss_parameter_supported": True,
            }
        )
