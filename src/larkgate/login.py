"""The browser side of the Feishu login: ``/oauth/start`` and ``/oauth/callback``.

Each login gets a random single-use ``state`` bound to its PKCE verifier and to the subject that
asked: an MCP session (the login link), or a flow of another module that borrows the Feishu
login through ``begin`` and gets the result back through a ``LoginFollowUp``. Both live in the
store (as a digest and sealed), so a login survives a gateway restart and a replayed or forged
callback changes nothing.

A login link names its session by a login handle (``larkgate.loginlinks``), never by the
session id, which would let anyone who sees the link act in the session. Whoever finishes a
login link's login binds their Feishu identity to that link's MCP session, so a link sent to
someone else ("please log in here") would let the sender act as them. The link therefore opens
a page that names the client, the transport and when the session was opened, and warns; only
its button (a POST with a single-use token bound to the session, the browser's cookie and the
gateway's origin) goes on to Feishu. Once a session is bound to a user, only that same user can
log in on it again: a used link opened by someone else cannot take the session over.
limitation: a person talked into pressing the button is still fooled; OAuth, where the client
that started the login gets the token, is the robust choice for public deployments.
"""

from __future__ import annotations

import hmac
import html
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

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
from .loginlinks import HANDLE_PARAM
from .pages import (
    BROWSER_COOKIE,
    FormError,
    cookie_name,
    framed_page,
    page,
    read_form,
    same_origin,
    set_cookie,
)
from .store import SessionLogin, SessionRecord, Store, digest
from .transports.sessions import SessionTable
from .userkey import user_key

log = logging.getLogger(__name__)

TRANSPORT_NAMES = {"streamable": "Streamable HTTP (/mcp)", "sse": "HTTP+SSE (/sse)"}
# What links of earlier versions carried; it is never looked up, only recognised.
OUTDATED_PARAM = "sessionId"


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
        """The login link: a page saying what would act as the person, with a button to go on.

        Nothing is logged in and Feishu is not asked until the button is pressed (``confirm``).
        """
        handle = request.query_params.get(HANDLE_PARAM, "")
        record = self._store.session_by_login(handle) if handle else None
        if record is None:
            self.outcomes["refused"] += 1
            return _unknown_session(outdated=not handle and OUTDATED_PARAM in request.query_params)
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

        browser_id = request.cookies.get(self._browser_cookie()) or secrets.token_urlsafe(32)
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        ttl = self._settings.login_state_ttl
        self._store.put_login_confirmation(
            token,
            record.digest,
            browser_id=browser_id,
            scopes=tuple(extra_scopes),
            expires_at=now + ttl,
            now=now,
        )
        response = self._confirmation_page(record, handle, token, extra_scopes)
        set_cookie(response, self._settings, BROWSER_COOKIE, browser_id, ttl)
        return response

    def _confirmation_page(
        self, record: SessionRecord, handle: str, token: str, extra_scopes: Sequence[str]
    ) -> Response:
        public = html.escape(self._settings.public_url)
        transport = html.escape(TRANSPORT_NAMES.get(record.transport, record.transport))
        asked = (
            "<li>Feishu permissions it asks for besides the usual ones: "
            f"<code>{html.escape(' '.join(extra_scopes))}</code></li>"
            if extra_scopes
            else ""
        )
        # The page does not say who: anyone holding the link may open it.
        bound = (
            "<p>This session is already logged in to Feishu. Only the same Feishu user can log "
            "in on it again (as when Feishu asks for a new login); a login as anyone else is "
            "refused and changes nothing.</p>"
            if record.user_id is not None
            else ""
        )
        body = f"""<p>An AI client is asking to use Feishu <strong>as you</strong> through
LarkGate at <code>{public}</code>:</p>
<ul><li>Client: {_client_named(record)}</li>
<li>Connected over {transport}; {_opened(record.created_at)}</li>{asked}</ul>
<p><strong>Continue only if you yourself just asked your AI client to connect.</strong>
If someone sent you this link, close this page: whoever started this session would act as you
in Feishu.</p>{bound}
<form method="post" action="{public}/oauth/start">
<input type="hidden" name="{HANDLE_PARAM}" value="{html.escape(handle)}">
<input type="hidden" name="confirm" value="{token}">
<button type="submit">Continue to the Feishu login</button>
</form>"""
        return framed_page("Log in to Feishu for an AI client?", body)

    async def confirm(self, request: Request) -> Response:
        """The confirmation page's button: only that page, in that browser, goes on to Feishu.

        A refused post changes nothing, and its token stays usable by the page it belongs to.
        """
        try:
            form = await read_form(request)
        except FormError as exc:
            return self._refused(400, "This form is not valid", str(exc), errors.FORM_EXPIRED)
        if not same_origin(request, self._settings):
            log.warning("a login-link confirmation was posted from another site; refused")
            return self._refused(
                403,
                "This form did not come from LarkGate",
                "Another site tried to continue a login for you. Nothing was changed.",
                errors.BAD_ORIGIN,
            )
        handle, token = form.get(HANDLE_PARAM, ""), form.get("confirm", "")
        pending = self._store.get_login_confirmation(token) if token else None
        if pending is None or pending.expires_at <= self._clock.now():
            return self._refused(
                400,
                "This login page has expired",
                "It was already used, is too old, or did not come from this gateway. Nothing "
                "was changed. Open the login link your MCP client shows again.",
                errors.FORM_EXPIRED,
            )
        record = self._store.session_by_login(handle) if handle else None
        if record is not None and not hmac.compare_digest(pending.session_digest, record.digest):
            log.warning("a login-link confirmation named another session; refused")
            return self._refused(
                403,
                "This form did not come from this login page",
                "Nothing was changed. Open the login link your MCP client shows again.",
                errors.FORM_EXPIRED,
            )
        browser_id = request.cookies.get(self._browser_cookie(), "")
        if not hmac.compare_digest(digest(browser_id), pending.browser_digest):
            log.warning("a login-link confirmation came from another browser; refused")
            return self._refused(
                403,
                "Finish this in the browser you started in",
                "This login page was opened in another browser, so nothing was changed. If you "
                "did not open it yourself, someone may have sent you their login link: close "
                "this page.",
                errors.OTHER_BROWSER,
            )

        if record is None:
            self.outcomes["refused"] += 1
            return _unknown_session()
        if not self._store.take_login_confirmation(token):
            return self._refused(
                400,
                "This login page has expired",
                "It was already used. Open the login link your MCP client shows again.",
                errors.FORM_EXPIRED,
            )
        log.info("login link of a %s session confirmed in its browser", record.transport)
        return self._to_feishu(record.digest, pending.scopes)

    def _browser_cookie(self) -> str:
        return cookie_name(self._settings, BROWSER_COOKIE)

    def _refused(self, status: int, title: str, message: str, code: str) -> Response:
        self.outcomes["refused"] += 1
        return framed_page(title, f"<p>{html.escape(message)}</p>", status=status, code=code)

    def begin(self, subject_id: str) -> Response:
        """Send the browser to Feishu; the result goes to the flow named ``subject_id``."""
        return self._to_feishu(digest(subject_id))

    def _to_feishu(self, subject_digest: str, extra_scopes: Sequence[str] = ()) -> Response:
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        now = self._clock.now()
        expires_at = now + self._settings.login_state_ttl
        self._store.put_login_state(state, subject_digest, verifier, expires_at, now=now)
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
        # One transaction: the session's owner is checked where the login is stored.
        login = self._store.log_in(
            session_digest,
            user.open_id,
            union_id=user.union_id,
            tenant_key=user.tenant_key,
            name=user.name,
            tokens=tokens,
        )
        if login is SessionLogin.OTHER_USER:
            self.outcomes["refused"] += 1
            log.warning(
                "user %s logged in through the link of another user's session; refused",
                user_key(user.open_id),
            )
            return _session_of_another_user()
        resumed = await self._resume(session_digest, user, request)
        if resumed is not None:
            self.outcomes["ok"] += 1
            return resumed
        bound = login is SessionLogin.BOUND
        live = self._sessions.by_digest(session_digest) if bound else None
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


def _unknown_session(*, outdated: bool = False) -> Response:
    why = (
        "It has a form this gateway no longer accepts (it carried the session's own id). Call "
        "the tool again: your MCP client then shows a new link."
        if outdated
        else "The MCP session it belongs to has ended or never existed. Reconnect your MCP "
        "client and use the new link it shows."
    )
    return page(
        "This login link is not valid", f"<p>{why}</p>", status=404, code=errors.UNKNOWN_SESSION
    )


def _session_of_another_user() -> Response:
    return page(
        "This session belongs to someone else",
        "<p>The MCP session this login link belongs to is already logged in to Feishu as "
        "another person, so your login was not used and nothing was changed. To use Feishu "
        "through LarkGate yourself, connect your own MCP client and open the link it shows."
        "</p>",
        status=409,
        code=errors.SESSION_OTHER_USER,
    )


def _client_named(record: SessionRecord) -> str:
    if not (record.client_name or record.client_version):
        return "one that did not give its name"
    name = html.escape(record.client_name or "a client without a name")
    version = f" {html.escape(record.client_version)}" if record.client_version else ""
    return f"<strong>{name}{version}</strong> (the name it gave itself; LarkGate cannot check it)"


def _opened(created_at: float) -> str:
    minutes = max(0, round((time.time() - created_at) / 60))
    ago = "just now" if minutes == 0 else f"{minutes} minute{'s' if minutes != 1 else ''} ago"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created_at))
    return f"session opened {when} ({ago})"
