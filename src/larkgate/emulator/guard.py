"""What every emulated Feishu endpoint does around its own work.

Each call is classified by the token it carries, may be delayed, failed or rate-limited on
a test's request, and is recorded with its answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .errors import (
    ApiCode,
    ApiError,
    OAuthError,
    api_message,
    missing_scope_msg,
    oauth_error_word,
)
from .faults import EndpointClass, InjectedFault
from .grants import AccessStatus, AccessToken, fingerprint
from .recording import CallRecord, TokenKind
from .state import EmulatorState

logger = logging.getLogger(__name__)

# Query parameters whose values are credentials; the call record keeps a fingerprint only.
_SECRET_PARAMS = frozenset(
    {"code", "access_token", "refresh_token", "client_secret", "app_secret", "code_verifier"}
)

# Recorded (never sent) when a client disconnects mid-request; nginx's name for it.
_CLIENT_GONE = 499


@dataclass
class Answer:
    """A JSON answer in Feishu's shape, before it becomes a response."""

    body: dict[str, object]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class CallContext:
    """Who is calling, as far as the emulator can tell; handlers fill in what they learn."""

    state: EmulatorState
    endpoint: EndpointClass | None
    credential_kind: TokenKind = "none"
    open_id: str | None = None
    token_fingerprint: str | None = None
    bearer_token: str | None = None
    access_status: AccessStatus | None = None
    access: AccessToken | None = None
    grant_type: str | None = None


Handler = Callable[[Request, CallContext], Awaitable[Answer | Response]]


def guarded(
    endpoint: EndpointClass | None, handler: Handler
) -> Callable[..., Awaitable[Response]]:
    """Wrap a handler; endpoint None means a browser page that faults and limits spare."""

    async def run(request: Request) -> Response:
        state: EmulatorState = request.app.state.emulator
        ctx = CallContext(state=state, endpoint=endpoint)
        result = await _answer(request, ctx, handler)

        if isinstance(result, Answer):
            code = result.body.get("code")
            response: Response = JSONResponse(result.body, result.status, result.headers)
        else:
            code = None
            response = result
        _record(request, ctx, response.status_code, code if isinstance(code, int) else None)
        return response

    return run


async def _answer(request: Request, ctx: CallContext, handler: Handler) -> Answer | Response:
    state = ctx.state
    try:
        # Read (and cache) the whole body first: a hang then delays the answer, not the work,
        # so a client that gives up still leaves the call done, as with a slow Feishu.
        await request.body()
    except ClientDisconnect:
        logger.info("client left before its request body arrived: %s", request.url.path)
        _classify_bearer(request, ctx)
        return Response(status_code=_CLIENT_GONE)
    delay = state.faults.hang_for(ctx.endpoint) if ctx.endpoint is not None else 0.0
    if delay > 0:
        await anyio.sleep(delay)
    # After the hang: a token is judged live or expired at the moment the answer is made.
    _classify_bearer(request, ctx)

    if ctx.endpoint is not None:
        fault = state.faults.next_fault(ctx.endpoint)
        if fault is not None:
            logger.info("serving injected fault status=%d code=%d", fault.status, fault.code)
            return _fault_answer(ctx.endpoint, fault)
        wait = state.rate_limiter.admit()
        if wait is not None:
            return _fault_answer(
                ctx.endpoint,
                InjectedFault(429, ApiCode.RATE_LIMITED, api_message(ApiCode.RATE_LIMITED)),
                wait,
            )
    try:
        return await handler(request, ctx)
    except (OAuthError, ApiError) as refusal:
        logger.info(
            "refused %s code=%d user=%s", request.url.path, refusal.code, ctx.open_id or "-"
        )
        return Answer(refusal.body(), refusal.status)


def _fault_answer(endpoint: EndpointClass, fault: InjectedFault, reset: int = 1) -> Answer:
    headers = {"x-ogw-ratelimit-reset": str(reset)} if fault.status == 429 else {}
    message = fault.message or f"injected fault {fault.code}"
    if endpoint == "token":
        body: dict[str, object] = {
            "code": fault.code,
            "error": oauth_error_word(fault.code),
            "error_description": message,
        }
    else:
        body = {"code": fault.code, "msg": message}
    return Answer(body, fault.status, headers)


def _classify_bearer(request: Request, ctx: CallContext) -> None:
    header = request.headers.get("authorization")
    if header is None:
        return
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        ctx.credential_kind = "invalid"
        return
    ctx.bearer_token = token
    ctx.token_fingerprint = fingerprint(token)

    status, access = ctx.state.grants.check_access(token)
    if access is not None:
        ctx.credential_kind = "user"
        ctx.open_id = access.open_id
        ctx.access_status = status
        ctx.access = access
    elif ctx.state.app_tokens.is_live(token):
        ctx.credential_kind = "tenant" if token.startswith("t-") else "app"
    else:
        ctx.credential_kind = "invalid"


def require_caller(request: Request, ctx: CallContext, *, allow_tenant: bool = True) -> None:
    """Refuse the call unless it carries a live token allowed here, with the scopes needed."""
    if ctx.credential_kind == "none":
        raise ApiError(ApiCode.MISSING_TOKEN)
    if ctx.credential_kind == "tenant" and allow_tenant:
        return
    if ctx.credential_kind != "user" or ctx.access is None:
        if (ctx.bearer_token or "").startswith("t-") and allow_tenant:
            raise ApiError(ApiCode.INVALID_TENANT_TOKEN)
        raise ApiError(ApiCode.INVALID_USER_TOKEN)
    if ctx.access_status is AccessStatus.REVOKED:
        raise ApiError(ApiCode.INVALID_USER_TOKEN)
    if ctx.access_status is AccessStatus.EXPIRED:
        raise ApiError(ApiCode.USER_TOKEN_EXPIRED)

    granted = ctx.state.grants.scope_of(ctx.access.grant_id)
    missing = [s for s in ctx.state.scopes_required_for(request.url.path) if s not in granted]
    if missing:
        raise ApiError(ApiCode.MISSING_SCOPE, missing_scope_msg(", ".join(missing)))


async def read_json_object(request: Request) -> dict[str, object]:
    """The request body as a JSON object; an empty body counts as `{}`."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as bad:
        raise ApiError(ApiCode.BAD_REQUEST, f"Bad Request: body is not JSON ({bad})") from bad
    if not isinstance(parsed, dict):
        raise ApiError(ApiCode.BAD_REQUEST, "Bad Request: body must be a JSON object")
    return parsed


def _record(request: Request, ctx: CallContext, status: int, code: int | None) -> None:
    record = CallRecord(
        time=ctx.state.clock.now(),
        method=request.method,
        path=request.url.path,
        query=_scrub_query(request.url.query),
        token_kind=ctx.credential_kind,
        open_id=ctx.open_id,
        token_fingerprint=ctx.token_fingerprint,
        status=status,
        code=code,
        grant_type=ctx.grant_type,
    )
    ctx.state.calls.add(record)
    logger.debug(
        "%s %s -> %d code=%s kind=%s user=%s",
        record.method,
        record.path,
        status,
        code,
        record.token_kind,
        record.open_id,
    )


def _scrub_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key in _SECRET_PARAMS for key, _ in pairs):
        return query
    return urlencode([(k, "fp:" + fingerprint(v) if k in _SECRET_PARAMS else v) for k, v in pairs])
