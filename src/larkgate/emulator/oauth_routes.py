"""Feishu's OAuth surface: the login page, the token endpoints, user_info and app tokens."""

from __future__ import annotations

import html
import json
import logging
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .config import EmulatedUser, EmulatorConfig
from .errors import ApiCode, ApiError, OAuthCode, OAuthError
from .grants import CodeRequest, IssuedTokens, fingerprint, split_scope
from .guard import Answer, CallContext, guarded, read_json_object, require_caller

logger = logging.getLogger(__name__)

_PKCE_METHODS = ("S256", "plain")


async def authorize(request: Request, ctx: CallContext) -> Response:
    query = request.query_params
    config = ctx.state.config
    if query.get("client_id") != config.app_id:
        return _error_page("Unknown client_id: this app does not exist.")
    redirect_uri = query.get("redirect_uri", "")
    if urlsplit(redirect_uri).scheme not in ("http", "https"):
        return _error_page("redirect_uri is missing or is not an http(s) URL.")
    state = query.get("state")

    if query.get("response_type") != "code":
        return _redirect(redirect_uri, [("error", "unsupported_response_type")], state)
    challenge = query.get("code_challenge") or None
    method = query.get("code_challenge_method") or None
    if challenge is not None:
        method = method or "plain"
    if (method is not None and method not in _PKCE_METHODS) or (method and not challenge):
        return _redirect(redirect_uri, [("error", "invalid_request")], state)
    if query.get("emulator_deny") == "1":
        logger.info("login denied at the emulated consent page")
        return _redirect(redirect_uri, [("error", "access_denied")], state)

    chosen = query.get("emulator_user")
    if chosen is None:
        return _login_page(request, config)
    user = config.find_user(chosen)
    if user is None:
        return _error_page("No such emulated user.")
    ctx.open_id = user.open_id
    code = ctx.state.grants.issue_code(
        client_id=config.app_id,
        redirect_uri=redirect_uri,
        scope=split_scope(query.get("scope", "")),
        code_challenge=challenge,
        challenge_method=method,
        open_id=user.open_id,
    )
    return _redirect(redirect_uri, [("code", code)], state)


def _redirect(redirect_uri: str, params: list[tuple[str, str]], state: str | None) -> Response:
    if state is not None:
        params = [*params, ("state", state)]
    parts = urlsplit(redirect_uri)
    added = urlencode(params, quote_via=quote)
    query = f"{parts.query}&{added}" if parts.query else added
    return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=302)


def _login_page(request: Request, config: EmulatorConfig) -> Response:
    def link(extra: tuple[str, str]) -> str:
        href = request.url.path + "?" + urlencode([*request.query_params.multi_items(), extra])
        return html.escape(href, quote=True)

    def user_item(user: EmulatedUser) -> str:
        label = html.escape(f"{user.name} ({user.email})")
        href = link(("emulator_user", user.open_id))
        return f'<li><a class="user" href="{href}">Log in as {label}</a></li>'

    items = "\n".join(user_item(u) for u in config.users)
    deny = link(("emulator_deny", "1"))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>Log in to Feishu (emulator)</title></head><body>"
        "<h1>Log in to Feishu (emulator)</h1>"
        f"<p>App <code>{html.escape(config.app_id)}</code> asks to act on your behalf.</p>"
        f"<ul>{items}</ul>"
        f'<p><a class="deny" href="{deny}">Deny</a></p></body></html>'
    )
    return HTMLResponse(page)


def _error_page(message: str) -> Response:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Feishu emulator: error</title>"
        f"</head><body><h1>Authorization error</h1><p>{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(page, status_code=400)


async def token_v2(request: Request, ctx: CallContext) -> Answer:
    return await _token(request, ctx, v3=False)


async def token_v3(request: Request, ctx: CallContext) -> Answer:
    return await _token(request, ctx, v3=True)


async def _token(request: Request, ctx: CallContext, *, v3: bool) -> Answer:
    params = await _read_token_params(request)
    grant_type = params.get("grant_type")
    ctx.grant_type = grant_type
    if grant_type is None:
        raise OAuthError(OAuthCode.INVALID_REQUEST, "grant_type is required")
    if grant_type not in ("authorization_code", "refresh_token"):
        raise OAuthError(OAuthCode.UNSUPPORTED_GRANT_TYPE, "grant_type is not supported")
    _check_client(params, ctx.state.config)

    grants = ctx.state.grants
    if grant_type == "authorization_code":
        code = _required(params, "code")
        ctx.credential_kind, ctx.token_fingerprint = "code", fingerprint(code)
        ctx.open_id = grants.code_owner(code)
        request_fields = CodeRequest(
            code=code,
            client_id=params["client_id"],
            redirect_uri=params.get("redirect_uri"),
            code_verifier=params.get("code_verifier"),
            reject_unrequested_verifier=v3,
        )
        issued = grants.exchange_code(request_fields)
    else:
        refresh_token = _required(params, "refresh_token")
        ctx.credential_kind, ctx.token_fingerprint = "refresh", fingerprint(refresh_token)
        ctx.open_id = grants.refresh_owner(refresh_token)
        issued = grants.refresh(refresh_token)
    return Answer(_token_body(issued))


def _token_body(issued: IssuedTokens) -> dict[str, object]:
    body: dict[str, object] = {
        "code": 0,
        "access_token": issued.access_token,
        "expires_in": issued.expires_in,
    }
    if issued.refresh_token is not None:
        body["refresh_token"] = issued.refresh_token
        body["refresh_token_expires_in"] = issued.refresh_token_expires_in
    return {**body, "token_type": "Bearer", "scope": " ".join(issued.scope)}


async def _read_token_params(request: Request) -> dict[str, str]:
    """The token request's fields from a JSON or form body; empty values count as absent."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if content_type == "application/json":
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError as bad:
            raise OAuthError(OAuthCode.INVALID_REQUEST, "body is not valid JSON") from bad
        if not isinstance(parsed, dict):
            raise OAuthError(OAuthCode.INVALID_REQUEST, "body must be a JSON object")
        pairs = list(parsed.items())
    elif content_type == "application/x-www-form-urlencoded":
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    else:
        raise OAuthError(
            OAuthCode.INVALID_REQUEST,
            "Content-Type must be application/json or application/x-www-form-urlencoded",
        )

    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise OAuthError(OAuthCode.INVALID_REQUEST, f"parameter {key} is repeated")
        if not isinstance(value, str):
            raise OAuthError(OAuthCode.INVALID_REQUEST, f"parameter {key} must be a string")
        if value:
            params[key] = value
    return params


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise OAuthError(OAuthCode.INVALID_REQUEST, f"{name} is required")
    return value


def _check_client(params: dict[str, str], config: EmulatorConfig) -> None:
    client_id = _required(params, "client_id")
    client_secret = _required(params, "client_secret")
    if client_id != config.app_id or client_secret != config.app_secret:
        raise OAuthError(OAuthCode.INVALID_CLIENT, "client_id or client_secret is invalid")


async def user_info(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx, allow_tenant=False)
    user = ctx.state.config.find_user(ctx.open_id or "")
    if user is None:
        # A user removed from the config while holding tokens: Feishu would not know them.
        raise ApiError(ApiCode.INVALID_USER_TOKEN, "user of this token no longer exists")
    avatar = f"https://avatar.invalid/{user.user_id}.png"
    data = {
        "open_id": user.open_id,
        "union_id": user.union_id,
        "user_id": user.user_id,
        "tenant_key": user.tenant_key,
        "name": user.name,
        "en_name": user.name,
        "email": user.email,
        "avatar_url": avatar,
        "avatar_thumb": avatar,
        "avatar_middle": avatar,
        "avatar_big": avatar,
    }
    return Answer({"code": 0, "msg": "success", "data": data})


async def tenant_access_token(request: Request, ctx: CallContext) -> Answer:
    _check_app_credentials(await read_json_object(request), ctx.state.config)
    token, expire = ctx.state.app_tokens.issue("t-")
    ctx.credential_kind = "tenant"
    return Answer({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})


async def app_access_token(request: Request, ctx: CallContext) -> Answer:
    _check_app_credentials(await read_json_object(request), ctx.state.config)
    token, expire = ctx.state.app_tokens.issue("a-")
    ctx.credential_kind = "app"
    return Answer({"code": 0, "msg": "ok", "app_access_token": token, "expire": expire})


def _check_app_credentials(body: dict[str, object], config: EmulatorConfig) -> None:
    if body.get("app_id") != config.app_id:
        raise ApiError(ApiCode.INVALID_APP_PARAM, "invalid param: app_id is unknown or missing")
    if body.get("app_secret") != config.app_secret:
        raise ApiError(ApiCode.INVALID_APP_SECRET, "app secret invalid")


async def unknown_oauth_path(request: Request, ctx: CallContext) -> Answer:
    raise OAuthError(OAuthCode.INVALID_REQUEST, "no such OAuth endpoint")


routes = [
    Route("/open-apis/authen/v1/authorize", guarded(None, authorize), methods=["GET"]),
    Route("/open-apis/authen/v2/oauth/token", guarded("token", token_v2), methods=["POST"]),
    Route("/oauth/v3/token", guarded("token", token_v3), methods=["POST"]),
    # Recorded like the rest, so a test sees a client that calls a wrong OAuth URL.
    Route("/oauth/{rest:path}", guarded(None, unknown_oauth_path), methods=["GET", "POST"]),
    Route("/open-apis/authen/v1/user_info", guarded("openapi", user_info), methods=["GET"]),
    Route(
        "/open-apis/auth/v3/tenant_access_token/internal",
        guarded("app_token", tenant_access_token),
        methods=["POST"],
    ),
    Route(
        "/open-apis/auth/v3/app_access_token/internal",
        guarded("app_token", app_access_token),
        methods=["POST"],
    ),
]
