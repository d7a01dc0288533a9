"""HTTP pieces the authorization server's endpoints share: forms, cookies, errors, CORS.

Two cookies exist. The *browser* cookie is a random id that ties an authorization (or a key-page
login) to the browser that started it, so a Feishu login finished in another browser (a link
sent to a victim) issues nothing. The *keys* cookie is the key page's login. Both are HttpOnly
and SameSite=Lax (Lax, not Strict, because the way back from Feishu is a cross-site
navigation); every state-changing form also carries a token only the page could know.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..config import Settings
from ..login import page

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPE = "application/x-www-form-urlencoded"
# OAuth requests are a handful of short fields; a larger body is not one.
MAX_FORM_BYTES = 16_384
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "600",
}


class FormError(Exception):
    """A form or query that cannot be an OAuth request; the message says why."""


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def single_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Parameters as a dict; OAuth forbids sending one twice (RFC 6749 section 3.1)."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise FormError(f"parameter {name} is repeated")
        values[name] = value
    return values


async def read_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise FormError(f"Content-Type must be {FORM_TYPE}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError("request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("request body is not UTF-8") from None
    return single_values(parse_qsl(text, keep_blank_values=True))


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


def framed_page(title: str, body: str, status: int = 200, code: str | None = None) -> Response:
    """A page with forms: other sites may not frame it (its buttons are click targets)."""
    response = page(title, body, status=status, code=code)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    # Under no-referrer, browsers send "Origin: null" with a form post, and the origin
    # check below could not tell our own forms from forged ones; same-origin still sends
    # nothing to other sites.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def same_origin(request: Request, settings: Settings) -> bool:
    """Browsers send Origin on form posts; one from elsewhere is a cross-site forgery."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    public = urlsplit(settings.public_url)
    return origin == f"{public.scheme}://{public.netloc}"


def _secure(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def cookie_name(settings: Settings, base: str) -> str:
    # The __Host- prefix makes browsers refuse the cookie unless Secure, Path=/ and host-only.
    return f"__Host-{base}" if _secure(settings) else base


def set_cookie(
    response: Response, settings: Settings, base: str, value: str, max_age: float
) -> None:
    response.set_cookie(
        cookie_name(settings, base),
        value,
        max_age=int(max_age),
        path="/",
        secure=_secure(settings),
        httponly=True,
        samesite="lax",
    )


def clear_cookie(response: Response, settings: Settings, base: str) -> None:
    response.delete_cookie(
        cookie_name(settings, base), path="/", secure=_secure(settings), httponly=True
    )


def form_token(secret: str) -> str:
    """The anti-forgery token of a form: derived from the cookie, so only its page knows it."""
    return hashlib.sha256(b"larkgate-form:" + secret.encode()).hexdigest()
