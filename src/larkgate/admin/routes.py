"""HTTP side of the admin: the page under /admin (cookie + CSRF) and /admin/api (Bearer token).

Page actions are POST forms that carry a CSRF token bound to the signed cookie; a foreign
Origin is refused as well. The API is for `larkgate instances stop` and friends and for
scripts: ``Authorization: Bearer <admin token>``, no cookie.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .actions import ActionRefused, AdminActions
from .auth import COOKIE_NAME, COOKIE_TTL, AdminAuth
from .views import dashboard, login_page

if TYPE_CHECKING:
    from ..app import Gateway
    from ..ops import Operations

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # with no-referrer, browsers send Origin: null
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class AdminSite:
    def __init__(self, gateway: Gateway, ops: Operations, auth: AdminAuth) -> None:
        self._gateway = gateway
        self._ops = ops
        self._auth = auth
        self.actions = AdminActions(gateway, ops)
        self._secure = gateway.settings.public_url.startswith("https://")

    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.page, methods=["GET"]),
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/instances/{instance_id}/stop", self.page_stop, methods=["POST"]),
            Route("/admin/users/{user}/end-sessions", self.page_end_sessions, methods=["POST"]),
            Route("/admin/api/status", self.api_status, methods=["GET"]),
            Route("/admin/api/instances/{instance_id}/stop", self.api_stop, methods=["POST"]),
            Route("/admin/api/users/{user}/end-sessions", self.api_end, methods=["POST"]),
            Route("/admin/api/users/{user}/logout", self.api_logout, methods=["POST"]),
            Route("/admin/api/sessions/{prefix}/end", self.api_end_one, methods=["POST"]),
        ]

    # -- the page ----------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status, headers=PAGE_HEADERS)

    async def page(self, request: Request) -> Response:
        cookie = request.cookies.get(COOKIE_NAME)
        if not self._auth.cookie_valid(cookie):
            return self._html(login_page())
        assert cookie is not None
        gateway = self._ops.sampler.gateway_series()
        return self._html(
            dashboard(
                self.actions.status(),
                instances=self.actions.instances(),
                users=self.actions.users(),
                gateway_rss=[s.rss for s in gateway.samples],
                gateway_cpu=[s.cpu_percent for s in gateway.samples],
                csrf=self._auth.csrf_for(cookie),
                notice=request.query_params.get("notice", "")[:200],
            )
        )

    async def login(self, request: Request) -> Response:
        if not self._same_origin(request):
            return self._html(login_page("This form came from another site."), 403)
        if self._auth.too_many_failures():
            return self._html(login_page("Too many wrong tokens; wait a minute."), 429)
        form = await _form(request)
        if not self._auth.token_matches(form.get("token", "")):
            self._auth.note_failure()
            log.warning("admin sign-in with a wrong token")
            return self._html(login_page("That is not the admin token."), 401)
        response = RedirectResponse("/admin", status_code=303, headers=PAGE_HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            self._auth.new_cookie(),
            max_age=COOKIE_TTL,
            path="/admin",
            secure=self._secure,
            httponly=True,
            samesite="strict",
        )
        log.info("admin signed in")
        return response

    async def logout(self, request: Request) -> Response:
        refused = await self._refuse_form(request)
        if refused is not None:
            return refused
        response = RedirectResponse("/admin", status_code=303, headers=PAGE_HEADERS)
        response.delete_cookie(COOKIE_NAME, path="/admin")
        return response

    async def page_stop(self, request: Request) -> Response:
        refused = await self._refuse_form(request)
        if refused is not None:
            return refused
        instance_id = request.path_params["instance_id"]
        try:
            user = await self.actions.stop_instance(instance_id)
        except ActionRefused as exc:
            return _back(str(exc))
        log.info("admin stopped instance %s of user %s", instance_id, user)
        return _back(f"Stopped instance {instance_id}; it starts again on the user's next call.")

    async def page_end_sessions(self, request: Request) -> Response:
        refused = await self._refuse_form(request)
        if refused is not None:
            return refused
        user = request.path_params["user"]
        try:
            ended = self.actions.end_sessions(user)
        except ActionRefused as exc:
            return _back(str(exc))
        log.info("admin ended %d sessions of user %s", ended, user)
        return _back(f"Ended {ended} session(s) of user {user}.")

    async def _refuse_form(self, request: Request) -> Response | None:
        """None when the form comes from a signed-in page of this site, else the refusal."""
        cookie = request.cookies.get(COOKIE_NAME)
        if not self._auth.cookie_valid(cookie):
            return self._html(login_page("Please sign in again."), 401)
        form = await _form(request)
        if not self._same_origin(request) or not self._auth.csrf_valid(cookie, form.get("csrf")):
            log.warning("admin form refused: missing or wrong CSRF token or Origin")
            return self._html(login_page("This form is stale or came from another site."), 403)
        return None

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser, or an old one: the CSRF token still has to match
        own = {f"{request.url.scheme}://{request.url.netloc}"}
        public = urlsplit(self._gateway.settings.public_url)
        if public.scheme and public.netloc:
            own.add(f"{public.scheme}://{public.netloc}")
        return origin in own

    # -- the API -----------------------------------------------------------------------------

    def _api_refused(self, request: Request) -> Response | None:
        if self._auth.bearer_matches(request.headers.get("authorization")):
            return None
        return JSONResponse(
            {"error": "admin token required (Authorization: Bearer ...)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def api_status(self, request: Request) -> Response:
        refused = self._api_refused(request)
        return refused or JSONResponse(self.actions.status())

    async def api_stop(self, request: Request) -> Response:
        refused = self._api_refused(request)
        if refused is not None:
            return refused
        instance_id = request.path_params["instance_id"]
        try:
            user = await self.actions.stop_instance(instance_id)
        except ActionRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        log.info("admin API stopped instance %s of user %s", instance_id, user)
        return JSONResponse({"stopped": instance_id, "user": user})

    async def api_end(self, request: Request) -> Response:
        refused = self._api_refused(request)
        if refused is not None:
            return refused
        try:
            ended = self.actions.end_sessions(request.path_params["user"])
        except ActionRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"ended": ended})

    async def api_end_one(self, request: Request) -> Response:
        refused = self._api_refused(request)
        if refused is not None:
            return refused
        try:
            digest = self.actions.end_session(request.path_params["prefix"])
        except ActionRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"ended": digest[:12]})

    async def api_logout(self, request: Request) -> Response:
        refused = self._api_refused(request)
        if refused is not None:
            return refused
        try:
            ended = await self.actions.logout(request.path_params["user"])
        except ActionRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        log.info("admin API logged out user %s", request.path_params["user"])
        return JSONResponse({"logged_out": True, "ended": ended})


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form; anything larger or stranger reads as empty."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def _back(notice: str) -> Response:
    return RedirectResponse(
        f"/admin?notice={quote(notice)}", status_code=303, headers=PAGE_HEADERS
    )
