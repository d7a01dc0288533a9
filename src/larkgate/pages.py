"""Pages a person opens in a browser, and the forms on them: markup, form parsing, cookies.

The login link, the consent page and the key page share these. The *browser* cookie is a random
id that ties a login (or an authorization) to the browser that started it, so that a login
finished in another browser (a link sent to a victim) grants nothing. Cookies are HttpOnly and
SameSite=Lax (Lax, not Strict, because the way back from Feishu and a link opened from a chat
are cross-site navigations); every state-changing form also carries a token only its page could
know, and must come from the gateway's own origin.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .config import Settings

FORM_TYPE = "application/x-www-form-urlencoded"
# Forms here are a handful of short fields; a larger body is not one of them.
MAX_FORM_BYTES = 16_384
BROWSER_COOKIE = "larkgate_browser"


class FormError(Exception):
    """A form or query that cannot be what the page sent; the message says why."""


def page(title: str, body: str, status: int = 200, code: str | None = None) -> HTMLResponse:
    code_line = f'<p class="code">Error code: <code>{html.escape(code)}</code></p>' if code else ""
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - LarkGate</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;
color:#1f2329}}h1{{font-size:1.4rem}}.code{{color:#646a73;font-size:.9rem}}</style></head>
<body><h1>{html.escape(title)}</h1>{body}{code_line}</body></html>"""
    return HTMLResponse(
        text,
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
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
