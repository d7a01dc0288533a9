"""``/authorize``: check the request, ask the user's consent, log in to Feishu, issue a code.

Until the client and its redirect URI are known good, errors are shown as a page and never
redirected anywhere (no open redirect). After that they go back to the client, with ``state``
and ``iss`` (RFC 9207). Consent is asked every time: a grant acts as the user in Feishu.

The consent form, the Feishu login and the code are tied to the browser that loaded the form
(the browser cookie): a Feishu login link passed to someone else issues nothing, which stops a
client from obtaining another person's grant by sending them its login link.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import urlsplit

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
    cookie_name,
    framed_page,
    read_form,
    same_origin,
    set_cookie,
    single_values,
)
from ..store import digest
from . import audit
from .grants import AuthorizationRequest, Client, CodeGrant, GrantStore
from .metadata import Resources, granted_scope
from .ratelimit import RateLimiter
from .redirects import is_loopback, matches, sole
from .tokens import mint, same, valid_challenge
from .web import client_address, redirect, with_query

log = logging.getLogger(__name__)

MAX_STATE_LENGTH = 512


class AuthorizeEndpoint:
    def __init__(
        self,
        settings: Settings,
        grants: GrantStore,
        resources: Resources,
        limiter: RateLimiter,
        *,
        clock: Clock,
        login: LoginRoutes,
    ) -> None:
        self._settings = settings
        self._store = grants
        self._resources = resources
        self._limiter = limiter
        self._clock = clock
        self._login = login

    # -- GET: check the request and show the consent page ----------------------------------

    async def ask(self, request: Request) -> Response:
        if not self._limiter.allow("authorize", client_address(request)):
            return _refused(
                429, "Too many requests", "Wait a minute and try again.", errors.RATE_LIMITED
            )
        try:
            params = single_values(list(request.query_params.multi_items()))
        except FormError as exc:
            return _refused(400, "This authorization request is not valid", str(exc))
        client = self._store.get_client(params.get("client_id", ""))
        if client is None:
            return _refused(
                400,
                "Unknown app",
                "The app that sent you here is not registered with this gateway. Start again "
                "from your MCP client.",
            )
        redirect_uri = params.get("redirect_uri") or sole(client.redirect_uris)
        if not redirect_uri or not matches(client.redirect_uris, redirect_uri):
            return _refused(
                400,
                "This authorization request is not valid",
                "The app's return address is not one it registered, so LarkGate will not send "
                "you there.",
            )

        state = params.get("state", "")
        problem = self._problem(params, state)
        if problem is not None:
            return self._back_to_client(redirect_uri, state, *problem)
        resource = self._resources.canonical(params.get("resource", self._resources.issuer))
        if resource is None:
            return self._back_to_client(
                redirect_uri, state, "invalid_target", "resource must name this gateway's /mcp"
            )

        now = self._clock.now()
        browser_id = request.cookies.get(self._browser_cookie()) or mint()
        request_id = mint()
        pending = AuthorizationRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            code_challenge=params["code_challenge"],
            resource=resource,
            scope=granted_scope(params.get("scope", "")),
            browser_digest=digest(browser_id),
            expires_at=now + self._settings.login_state_ttl,
        )
        self._store.put_request(request_id, pending, now)
        response = self._consent_page(client, pending, request_id)
        set_cookie(
            response, self._settings, BROWSER_COOKIE, browser_id, self._settings.login_state_ttl
        )
        return response

    def _problem(self, params: dict[str, str], state: str) -> tuple[str, str] | None:
        if params.get("response_type") != "code":
            return "unsupported_response_type", "response_type must be code"
        if not state or len(state) > MAX_STATE_LENGTH:
            return "invalid_request", "state is required"
        if params.get("code_challenge_method") != "S256" or not valid_challenge(
            params.get("code_challenge", "")
        ):
            return "invalid_request", "PKCE with code_challenge_method S256 is required"
        return None

    def _browser_cookie(self) -> str:
        return cookie_name(self._settings, BROWSER_COOKIE)

    def _consent_page(
        self, client: Client, pending: AuthorizationRequest, request_id: str
    ) -> Response:
        name = html.escape(client.name or "An unnamed app")
        tools = html.escape(self._settings.lark_tools)
        access = _duration(self._settings.oauth_access_token_ttl)
        idle = _duration(self._settings.oauth_refresh_token_ttl)
        public = html.escape(self._settings.public_url)
        body = f"""<p><strong>{name}</strong> wants to use LarkGate as you.</p>
<p class="code">The app chose this name itself; LarkGate cannot check it. App id
<code>{html.escape(client.client_id)}</code>.</p>
<p>If you allow it, it can:</p>
<ul><li>call the Feishu/Lark tools of this gateway (<code>{tools}</code>) with your Feishu
identity, at <code>{html.escape(pending.resource)}</code>, within the Feishu permissions you
grant on the next page;</li>
<li>keep doing so while it stays in use: each access lasts {access} and renews itself unless
the app goes unused for {idle}.</li></ul>
<p>After you log in to Feishu you return to {html.escape(_where(pending.redirect_uri))}. You can
disconnect the app at any time at <a href="{public}/keys">{public}/keys</a>.</p>
<p>Only allow this if you just asked your MCP client to connect.</p>
<form method="post" action="{public}/authorize">
<input type="hidden" name="request" value="{html.escape(request_id)}">
<button type="submit" name="decision" value="approve">Allow and log in to Feishu</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>"""
        return framed_page(f"Allow {client.name or 'this app'}?", body)

    # -- POST: the user's decision ----------------------------------------------------------

    async def decide(self, request: Request) -> Response:
        address = client_address(request)
        if not self._limiter.allow("authorize", address):
            return _refused(
                429, "Too many requests", "Wait a minute and try again.", errors.RATE_LIMITED
            )
        try:
            form = await read_form(request)
        except FormError as exc:
            return _refused(400, "This form is not valid", str(exc))
        request_id = form.get("request", "")
        pending = self._store.get_request(request_id) if request_id else None
        if pending is None or pending.expires_at <= self._clock.now():
            return _refused(
                400,
                "This consent form has expired",
                "It was already used or is too old. Start again from your MCP client.",
                errors.AUTHORIZATION_EXPIRED,
            )
        if not same_origin(request, self._settings) or not self._same_browser(request, pending):
            return _other_browser()

        if form.get("decision") != "approve":
            self._store.drop_request(request_id)
            audit.record("consent denied", client=pending.client_id, ip=address)
            return self._back_to_client(
                pending.redirect_uri, pending.state, "access_denied", "the user said no"
            )
        subject_id = mint()
        if not self._store.approve_request(request_id, subject_id):
            return _refused(
                400,
                "This consent form has expired",
                "It was already used. Start again from your MCP client.",
                errors.AUTHORIZATION_EXPIRED,
            )
        audit.record("consent given", client=pending.client_id, ip=address)
        return self._login.begin(subject_id)

    def _same_browser(self, request: Request, pending: AuthorizationRequest) -> bool:
        browser_id = request.cookies.get(self._browser_cookie())
        return browser_id is not None and same(digest(browser_id), pending.browser_digest)

    # -- back from Feishu ------------------------------------------------------------------

    async def resume(
        self, subject_digest: str, outcome: FeishuUser | str, request: Request
    ) -> Response | None:
        pending = self._store.take_request(subject_digest)
        if pending is None:
            return None
        if not self._same_browser(request, pending):
            log.warning(
                "an authorization for client %s ended in another browser", pending.client_id
            )
            return _other_browser()
        now = self._clock.now()
        if pending.expires_at <= now:
            return self._back_to_client(
                pending.redirect_uri, pending.state, "access_denied", "the login took too long"
            )
        if isinstance(outcome, str):
            return self._back_to_client(
                pending.redirect_uri, pending.state, outcome, "the Feishu login did not complete"
            )
        code = mint()
        grant = CodeGrant(
            client_id=pending.client_id,
            user_id=outcome.open_id,
            redirect_uri=pending.redirect_uri,
            code_challenge=pending.code_challenge,
            resource=pending.resource,
            scope=pending.scope,
            expires_at=now + self._settings.oauth_code_ttl,
        )
        self._store.put_code(code, grant, now)
        audit.record(
            "code issued",
            user_id=outcome.open_id,
            client=pending.client_id,
            resource=pending.resource,
            ip=client_address(request),
        )
        location = with_query(
            pending.redirect_uri,
            {"code": code, "state": pending.state, "iss": self._resources.issuer},
        )
        return redirect(location)

    def _back_to_client(
        self, redirect_uri: str, state: str, error: str, description: str
    ) -> Response:
        params = {"error": error, "error_description": description, "iss": self._resources.issuer}
        if state:
            params["state"] = state
        return redirect(with_query(redirect_uri, params))


def _where(redirect_uri: str) -> str:
    parts = urlsplit(redirect_uri)
    if is_loopback(redirect_uri):
        return f"an app on this computer (port {parts.port or 80})"
    if parts.scheme == "https":
        return parts.netloc
    return f"the app ({parts.scheme}:)"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{round(seconds)} seconds"


def _refused(
    status: int, title: str, message: str, code: str = errors.AUTHORIZATION_INVALID
) -> Response:
    return framed_page(title, f"<p>{html.escape(message)}</p>", status=status, code=code)


def _other_browser() -> Response:
    return _refused(
        403,
        "Finish this in the browser you started in",
        "This login was started in another browser, or the form did not come from this "
        "gateway, so nothing was granted. If you did not start it, someone may have sent you "
        "their login link: close this page.",
        errors.OTHER_BROWSER,
    )
