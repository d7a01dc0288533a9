"""``/keys``: personal access keys for MCP clients that cannot do OAuth, and connected apps.

A person reaches the page logged in: right after a login-link login (the success page links
here and sets the page's cookie), or through ``/keys/login``, which runs the Feishu login for
this page alone. There they create a key (shown once, stored as a digest), see each key's last
use, revoke keys, and disconnect OAuth clients they allowed. Every change is a POST that must
carry the page's form token and come from this gateway's origin.
"""

from __future__ import annotations

import html
import logging
import re
import time

from starlette.requests import Request
from starlette.responses import Response

from .. import errors
from ..clock import Clock
from ..config import Settings
from ..feishu.oauth import FeishuUser
from ..login import LoginRoutes
from ..pages import (
    BROWSER_COOKIE,
    FormError,
    clear_cookie,
    cookie_name,
    framed_page,
    read_form,
    same_origin,
    set_cookie,
)
from ..store import Store, digest
from . import audit
from .grants import GrantStore
from .keystore import KeyStore
from .ratelimit import RateLimiter
from .tokens import mint, same
from .web import client_address, form_token, redirect

log = logging.getLogger(__name__)

KEYS_COOKIE = "larkgate_keys"
MAX_KEY_NAME = 60
_KEY_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,60}")


class KeysPages:
    def __init__(
        self,
        settings: Settings,
        keys: KeyStore,
        grants: GrantStore,
        store: Store,
        *,
        limiter: RateLimiter,
        clock: Clock,
        login: LoginRoutes,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._grants = grants
        self._store = store
        self._limiter = limiter
        self._clock = clock
        self._login = login
        self.url = f"{settings.public_url}/keys"

    # -- logging in to the page ------------------------------------------------------------

    def remember(self, response: Response, user_id: str) -> None:
        """Log the browser in to this page (called on the login-link success page)."""
        secret = mint()
        ttl = self._settings.web_session_ttl
        self._keys.put_web_session(secret, user_id, self._clock.now(), ttl)
        set_cookie(response, self._settings, KEYS_COOKIE, secret, ttl)

    async def login(self, request: Request) -> Response:
        if not self._limiter.allow("keys", client_address(request)):
            return _page_error(
                429, "Too many requests", "Wait a minute and try again.", errors.RATE_LIMITED
            )
        browser_id = request.cookies.get(cookie_name(self._settings, BROWSER_COOKIE)) or mint()
        subject_id = mint()
        ttl = self._settings.login_state_ttl
        self._keys.put_web_login(subject_id, digest(browser_id), self._clock.now(), ttl)
        response = self._login.begin(subject_id)
        set_cookie(response, self._settings, BROWSER_COOKIE, browser_id, ttl)
        return response

    async def resume(
        self, subject_digest: str, outcome: FeishuUser | str, request: Request
    ) -> Response | None:
        taken = self._keys.take_web_login(subject_digest)
        if taken is None:
            return None
        browser_digest, expires_at = taken
        browser_id = request.cookies.get(cookie_name(self._settings, BROWSER_COOKIE))
        if browser_id is None or not same(digest(browser_id), browser_digest):
            return _page_error(
                403,
                "Finish this in the browser you started in",
                "This login was started in another browser, so it logged nobody in here.",
                errors.OTHER_BROWSER,
            )
        if expires_at <= self._clock.now() or isinstance(outcome, str):
            return _page_error(
                400,
                "Login not completed",
                "Feishu did not complete the login in time. Nothing was changed.",
                errors.LOGIN_CANCELLED,
            )
        response = redirect(self.url, status=303)
        self.remember(response, outcome.open_id)
        return response

    def _visitor(self, request: Request) -> tuple[str, str] | None:
        """(user id, page cookie) of a browser logged in to this page."""
        secret = request.cookies.get(cookie_name(self._settings, KEYS_COOKIE))
        if not secret:
            return None
        user_id = self._keys.web_session_user(secret, self._clock.now())
        return (user_id, secret) if user_id is not None else None

    # -- the page --------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        visitor = self._visitor(request)
        if visitor is None:
            return framed_page(
                "Personal access keys",
                "<p>An MCP client that cannot log in by itself can use a personal access key "
                "instead: a secret that acts as you, sent as "
                "<code>Authorization: Bearer &lt;key&gt;</code> or in the URL.</p>"
                f'<p><a href="{html.escape(self.url)}/login">Log in with Feishu</a> to create '
                "or revoke keys and to disconnect apps you allowed.</p>",
            )
        return self._overview(*visitor)

    def _overview(self, user_id: str, secret: str, notice: str = "") -> Response:
        user = self._store.get_user(user_id)
        who = html.escape(user.name if user and user.name else "you")
        token = form_token(secret)
        keys = self._keys.list_keys(user_id)
        rows = "".join(
            f"<tr><td>{html.escape(k.name)}</td><td><code>{k.key_id}</code></td>"
            f"<td>{_when(k.created_at)}</td><td>{_when(k.last_used_at)}</td>"
            f"<td>{self._button('revoke', token, 'key_id', k.key_id, 'Revoke')}</td></tr>"
            for k in keys
        )
        apps = self._grants.connected_clients(user_id, self._clock.now())
        app_rows = "".join(
            f"<tr><td>{html.escape(a.client_name or 'unnamed app')}</td>"
            f"<td><code>{html.escape(a.resource)}</code></td><td>{_when(a.created_at)}</td>"
            f"<td>{_when(a.used_at)}</td>"
            f"<td>{self._button('disconnect', token, 'grant_id', a.grant_id, 'Disconnect')}"
            "</td></tr>"
            for a in apps
        )
        body = f"""{notice}<p>Logged in as <strong>{who}</strong>.</p>
<h2>Personal access keys</h2>
<table><tr><th>name</th><th>id</th><th>created</th><th>last used</th><th></th></tr>{rows}</table>
<form method="post" action="{html.escape(self.url)}/create">
<input type="hidden" name="csrf" value="{token}">
<label>Name <input name="name" maxlength="{MAX_KEY_NAME}" required></label>
<button type="submit">Create a key</button></form>
<h2>Apps you allowed</h2>
<table><tr><th>app</th><th>for</th><th>since</th><th>last renewed</th><th></th></tr>
{app_rows}</table>
{self._button("logout", token, "", "", "Log out of this page")}"""
        return framed_page("Personal access keys", body)

    def _button(self, action: str, token: str, field: str, value: str, label: str) -> str:
        hidden = (
            f'<input type="hidden" name="{field}" value="{html.escape(value)}">' if field else ""
        )
        return (
            f'<form method="post" action="{html.escape(self.url)}/{action}">'
            f'<input type="hidden" name="csrf" value="{token}">{hidden}'
            f'<button type="submit">{html.escape(label)}</button></form>'
        )

    # -- changes ---------------------------------------------------------------------------

    async def _checked_form(self, request: Request) -> tuple[str, str, dict[str, str]] | Response:
        """(user id, page cookie, form) of a genuine form post, or the page refusing it."""
        if not self._limiter.allow("keys", client_address(request)):
            return _page_error(
                429, "Too many requests", "Wait a minute and try again.", errors.RATE_LIMITED
            )
        visitor = self._visitor(request)
        if visitor is None:
            return _page_error(
                403,
                "Please log in again",
                "Your login to this page has ended. Open the key page and log in again.",
                errors.FORM_EXPIRED,
            )
        try:
            form = await read_form(request)
        except FormError as exc:
            return _page_error(400, "This form is not valid", str(exc), errors.FORM_EXPIRED)
        user_id, secret = visitor
        if not same_origin(request, self._settings) or not same(
            form.get("csrf", ""), form_token(secret)
        ):
            return _page_error(
                403,
                "This form did not come from this page",
                "Nothing was changed. Open the key page and try again.",
                errors.FORM_EXPIRED,
            )
        return user_id, secret, form

    async def create(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        user_id, secret, form = checked
        name = form.get("name", "").strip()
        if _KEY_NAME.fullmatch(name) is None:
            return self._overview(user_id, secret, _notice("Give the key a name (60 characters)."))
        created = self._keys.add_key(
            user_id, name, self._clock.now(), self._settings.max_access_keys
        )
        if created is None:
            limit = self._settings.max_access_keys
            return self._overview(
                user_id, secret, _notice(f"You already hold {limit} keys; revoke one first.")
            )
        key_id, key = created
        audit.record("access key created", user_id=user_id, key=key_id, ip=client_address(request))
        public = html.escape(self._settings.public_url)
        shown = html.escape(key)
        return framed_page(
            "Your new access key",
            f"<p>Copy the key <strong>{html.escape(name)}</strong> now: LarkGate keeps only a "
            "fingerprint of it and cannot show it again.</p>"
            f"<pre><code>{shown}</code></pre>"
            "<p>Give it to your MCP client as a header on "
            f"<code>{public}/mcp</code> or <code>{public}/sse</code>:<br>"
            f"<code>Authorization: Bearer {shown}</code></p>"
            "<p>A client that takes only a URL can use "
            f"<code>{public}/sse?key={shown}</code>; URLs end up in logs more easily than "
            "headers, so prefer the header.</p>"
            f'<p><a href="{html.escape(self.url)}">Back to your keys</a></p>',
        )

    async def revoke(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        user_id, _secret, form = checked
        key_id = form.get("key_id", "")
        if self._keys.delete_key(user_id, key_id):
            audit.record(
                "access key revoked", user_id=user_id, key=key_id, ip=client_address(request)
            )
        return redirect(self.url, status=303)

    async def disconnect(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        user_id, _secret, form = checked
        grant_id = form.get("grant_id", "")
        if self._grants.revoke_grant(user_id, grant_id):
            audit.record(
                "grant revoked by its user",
                user_id=user_id,
                grant=grant_id,
                ip=client_address(request),
            )
        return redirect(self.url, status=303)

    async def logout(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        _user_id, secret, _form = checked
        self._keys.end_web_session(secret)
        response = redirect(self.url, status=303)
        clear_cookie(response, self._settings, KEYS_COOKIE)
        return response


def _when(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment)) if moment else "never"


def _notice(text: str) -> str:
    return f"<p><strong>{html.escape(text)}</strong></p>"


def _page_error(
    status: int, title: str, message: str, code: str = errors.AUTHORIZATION_INVALID
) -> Response:
    return framed_page(title, f"<p>{html.escape(message)}</p>", status=status, code=code)
