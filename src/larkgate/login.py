"""The browser side of the Feishu login: ``/oauth/start`` and ``/oauth/callback``.

Each login gets a random single-use ``state`` bound to its PKCE verifier and to the subject that
asked: an MCP session (the login link), or a flow of another module that borrows the Feishu
login through ``begin`` and gets the result back through a ``LoginFollowUp``. Both live in the
store (as a digest and sealed), so a login survives a gateway restart and a replayed or forged
callback changes nothing.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import errors
from .clock import Clock
from .config import ENV_PREFIX, Settings
from .feishu.oauth import (
    FailureKind,
    FeishuError,
    FeishuOAuth,
    FeishuUser,
    parse_scopes,
    pkce_pair,
)
from .instances.pool import user_key
from .store import Store
from .transports.sessions import SessionTable

log = logging.getLogger(__name__)


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


class LoginFollowUp(Protocol):
    """A flow that sends the browser through the Feishu login with ``begin`` and resumes here."""

    async def resume(
        self, subject_digest: str, outcome: FeishuUser | str, request: Request
    ) -> Response | None:
        """The answer to a login this flow began, or None when the subject is not its own.

        ``outcome`` is the logged-in user (already stored), or the OAuth error code why there
        is none: ``access_denied``, ``server_error`` or ``temporarily_unavailable``.
        """


class KeysOffer(Protocol):
    """Lets a browser that just logged in through a login link manage that user's access keys."""

    url: str

    def remember(self, response: Response, user_id: str) -> None: ...


class LoginRoutes:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        sessions: SessionTable,
        oauth: FeishuOAuth,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._store = store
        self._sessions = sessions
        self._oauth = oauth
        self._clock = clock
        self.outcomes: dict[str, int] = {"ok": 0, "failed": 0, "refused": 0}
        self.follow_ups: list[LoginFollowUp] = []
        self.keys_offer: KeysOffer | None = None

    async def start(self, request: Request) -> Response:
        session_id = request.query_params.get("sessionId", "")
        record = self._store.get_session(session_id) if session_id else None
        if record is None:
            self.outcomes["refused"] += 1
            return page(
                "This login link is not valid",
                "<p>The MCP session it belongs to has ended or never existed. Reconnect your "
                "MCP client and use the new link it shows.</p>",
                status=404,
                code=errors.UNKNOWN_SESSION,
            )
        try:
            # A tool that met Feishu's 99991679 sends a link asking for the scopes it named.
            extra_scopes = parse_scopes(request.query_params.get("scope", ""))
        except ValueError as exc:
            self.outcomes["refused"] += 1
            return page(
                "This login link is not valid",
                "<p>It asks for a Feishu permission with an invalid name "
                f"({html.escape(str(exc))}). Nothing was changed. Use the link your MCP client "
                "shows.</p>",
                status=400,
                code=errors.LOGIN_SCOPE_INVALID,
            )
        return self.begin(session_id, extra_scopes)

    def begin(self, subject_id: str, extra_scopes: Sequence[str] = ()) -> Response:
        """Send the browser to Feishu; the result goes to ``subject_id`` (a session or a flow)."""
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        now = self._clock.now()
        expires_at = now + self._settings.login_state_ttl
        self._store.put_login_state(state, subject_id, verifier, expires_at, now=now)
        return RedirectResponse(
            self._oauth.authorize_url(state, challenge, extra_scopes),
            status_code=302,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    async def _resume(
        self, subject_digest: str, outcome: FeishuUser | str, request: Request
    ) -> Response | None:
        for follow_up in self.follow_ups:
            response = await follow_up.resume(subject_digest, outcome, request)
            if response is not None:
                return response
        return None

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        state = params.get("state", "")
        taken = self._store.take_login_state(state, now=self._clock.now()) if state else None
        if taken is None:
            self.outcomes["refused"] += 1
            return page(
                "This login cannot be completed",
                "<p>The login link was already used, has expired, or did not come from this "
                "gateway. Nothing was changed. Start again from the link your MCP client "
                "shows.</p>",
                status=400,
                code=errors.LOGIN_STATE_INVALID,
            )
        session_digest, verifier = taken
        if params.get("error") or not params.get("code"):
            self.outcomes["failed"] += 1
            resumed = await self._resume(session_digest, "access_denied", request)
            if resumed is not None:
                return resumed
            return page(
                "Login cancelled",
                "<p>Feishu did not grant access, so nothing was changed. You can start the "
                "login again from the link your MCP client shows.</p>",
                status=400,
                code=errors.LOGIN_CANCELLED,
            )
        try:
            grant = await self._oauth.exchange_code(params["code"], verifier)
            user = await self._oauth.user_info(grant.access_token)
        except FeishuError as exc:
            self.outcomes["failed"] += 1
            error = "temporarily_unavailable" if exc.transient else "server_error"
            resumed = await self._resume(session_digest, error, request)
            if resumed is not None:
                log.warning("login for an authorization failed: %s", exc)
                return resumed
            return self._failure_page(exc)

        tokens = grant.as_tokens(authorized_at=grant.obtained_at)
        self._store.upsert_user(
            user.open_id,
            union_id=user.union_id,
            tenant_key=user.tenant_key,
            name=user.name,
            tokens=tokens,
        )
        resumed = await self._resume(session_digest, user, request)
        if resumed is not None:
            self.outcomes["ok"] += 1
            return resumed
        bound = self._store.bind_session(session_digest, user.open_id)
        live = self._sessions.by_digest(session_digest)
        if live is not None:
            live.user_id = user.open_id
        self.outcomes["ok"] += 1
        log.info("user %s logged in (session bound: %s)", user_key(user.open_id), bound)
        response = self._success_page(
            user.name, grant.refresh_token != "", grant.access_expires_at, bound
        )
        if self.keys_offer is not None:
            self.keys_offer.remember(response, user.open_id)
        return response

    def _success_page(
        self, name: str, refreshable: bool, expires_at: float, bound: bool
    ) -> Response:
        who = html.escape(name) if name else "you"
        lines = [f"<p>LarkGate now acts as <strong>{who}</strong> in Feishu.</p>"]
        if bound:
            lines.append("<p>Go back to your MCP client and call the tool again.</p>")
        else:
            lines.append(
                "<p>Your MCP session ended meanwhile; reconnect your client and log in again.</p>"
            )
        if not refreshable:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
            lines.append(
                "<p><strong>Note:</strong> Feishu did not grant offline access, so this login "
                f"cannot be renewed and stops working at {when}.</p>"
            )
        if self.keys_offer is not None:
            lines.append(
                "<p>For an MCP client that cannot log in by itself, "
                f'<a href="{html.escape(self.keys_offer.url)}">create a personal access key</a>.'
                "</p>"
            )
        return page("Login succeeded", "".join(lines))

    def _failure_page(self, exc: FeishuError) -> Response:
        if exc.redirect_mismatch:
            return page(
                "Feishu refused the redirect address",
                f"<p>Feishu says the redirect URL does not match the app's whitelist. The "
                f"operator must add <code>{html.escape(self._settings.redirect_uri)}</code> to "
                f"the app's redirect URLs, or fix the setting <code>{ENV_PREFIX}PUBLIC_URL</code>."
                "</p>",
                status=502,
                code=errors.REDIRECT_URI_MISMATCH,
            )
        if exc.kind is FailureKind.GATEWAY:
            log.error("Feishu refused the gateway's login call: %s", exc)
            return page(
                "Feishu refused the gateway's app settings",
                f"<p>Feishu did not accept this gateway's app credentials (code {exc.code}). The "
                f"operator must check the settings <code>{ENV_PREFIX}APP_ID</code>, "
                f"<code>{ENV_PREFIX}APP_SECRET</code> and <code>{ENV_PREFIX}TOKEN_URL</code>.</p>",
                status=502,
                code=errors.LOGIN_FAILED,
            )
        log.warning("login failed: %s", exc)
        return page(
            "Login failed",
            "<p>Feishu did not complete the login"
            + (" because it is busy; please try again in a minute." if exc.transient else ".")
            + " Start again from the link your MCP client shows.</p>",
            status=502,
            code=errors.FEISHU_TRY_AGAIN if exc.transient else errors.LOGIN_FAILED,
        )
