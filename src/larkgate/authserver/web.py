"""HTTP pieces the authorization server's endpoints share: OAuth answers, CORS, redirects.

Pages, forms and cookies, which the login link shares, are in ``larkgate.pages``.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "600",
}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **CORS_HEADERS, **headers},
    )


def rate_limited_json(retry_after: int) -> JSONResponse:
    return oauth_error(
        429,
        "temporarily_unavailable",
        "too many requests from this address; slow down",
        **{"Retry-After": str(retry_after)},
    )


def json_answer(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **CORS_HEADERS})


async def preflight(request: Request) -> Response:
    """CORS preflight for the endpoints browser-based MCP clients call (no cookies involved)."""
    return Response(status_code=204, headers=CORS_HEADERS)


def with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    added = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{added}" if parts.query else added))


def redirect(location: str, status: int = 302) -> Response:
    return RedirectResponse(
        location,
        status_code=status,
        headers={**NO_STORE, "Referrer-Policy": "no-referrer"},
    )


def form_token(secret: str) -> str:
    """The anti-forgery token of a form: derived from the cookie, so only its page knows it."""
    return hashlib.sha256(b"larkgate-form:" + secret.encode()).hexdigest()
