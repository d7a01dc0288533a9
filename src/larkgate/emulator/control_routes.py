"""The /_emulator/* endpoints through which a test steers the emulator and looks inside it."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .faults import EndpointClass, HangTarget, InjectedFault
from .state import EmulatorState

logger = logging.getLogger(__name__)

_TTL_SETTINGS = (
    "access_token_ttl",
    "refresh_token_ttl",
    "code_ttl",
    "old_token_grace",
    "authorization_max_age",
    "tenant_token_ttl",
)
_LIMIT_SETTINGS = ("rate_limit_per_second", "rate_limit_per_minute")
_HANG_TARGETS: dict[str, HangTarget] = {target: target for target in get_args(HangTarget)}


class BadControlRequest(ValueError):
    """A test sent a control request the emulator cannot follow."""


Control = Callable[[EmulatorState, dict[str, object], Request], object]


def _control(action: Control) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        state: EmulatorState = request.app.state.emulator
        try:
            body = await _json_body(request)
            result = action(state, body, request)
        except BadControlRequest as bad:
            return JSONResponse({"error": str(bad)}, status_code=400)
        return JSONResponse(result)

    return run


async def _json_body(request: Request) -> dict[str, object]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as bad:
        raise BadControlRequest(f"body is not JSON: {bad}") from bad
    if not isinstance(parsed, dict):
        raise BadControlRequest("body must be a JSON object")
    return parsed


def _number(body: dict[str, object], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadControlRequest(f"{name} must be a non-negative number")
    return float(value)


def _whole(value: object, name: str, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = "null or " if allow_none else ""
        raise BadControlRequest(f"{name} must be {accepted}an integer of at least {minimum}")
    return value


def health(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    return {"ok": True}


def clock(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    if request.method == "POST":
        state.clock.advance(_number(body, "advance"))
    return {"now": state.clock.now(), "offset": state.clock.offset}


def calls(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    prefix = request.query_params.get("path_prefix", "")
    return {"calls": [c.as_json() for c in state.calls.matching(prefix)]}


def reset_calls(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    state.calls.clear()
    return {"ok": True}


def tokens(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    open_id = request.query_params.get("open_id", "")
    if state.config.find_user(open_id) is None:
        raise BadControlRequest("open_id names no emulated user")
    return state.grants.describe_user(open_id)


def revoke(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    open_id = body.get("open_id")
    if not isinstance(open_id, str) or state.config.find_user(open_id) is None:
        raise BadControlRequest("open_id names no emulated user")
    return {"revoked_grants": state.grants.revoke_user(open_id)}


def faults(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    unknown = set(body) - {"clear", "hang_seconds", "hang_paths", *get_args(EndpointClass)}
    if unknown:
        raise BadControlRequest(f"unknown fault settings: {', '.join(sorted(unknown))}")
    # Parse everything before changing anything, so a bad request changes nothing.
    queued = {e: _fault_list(body[e], e) for e in get_args(EndpointClass) if e in body}
    hang: tuple[float, HangTarget] | None = None
    if "hang_seconds" in body:
        target = _HANG_TARGETS.get(str(body.get("hang_paths", "all")))
        if target is None:
            raise BadControlRequest("hang_paths must be token, openapi or all")
        hang = (_number(body, "hang_seconds"), target)

    if body.get("clear") is True:
        state.faults.clear()
    for endpoint, pending in queued.items():
        state.faults.queue(endpoint, pending)
    if hang is not None:
        state.faults.hang(*hang)
    return state.faults.describe()


def _fault_list(raw: object, endpoint: str) -> list[InjectedFault]:
    if not isinstance(raw, list):
        raise BadControlRequest(f"{endpoint} must be a list of faults")
    parsed = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadControlRequest("each fault must be an object with status and code")
        status, code, message = item.get("status"), item.get("code"), item.get("msg")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise BadControlRequest("a fault's status must be an HTTP error status")
        if not isinstance(code, int) or (message is not None and not isinstance(message, str)):
            raise BadControlRequest("a fault's code must be an integer and msg a string")
        parsed.append(InjectedFault(status, code, message))
    return parsed


def require_scope(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    if body.get("clear") is True:
        state.clear_scope_requirements()
        return {"ok": True}
    prefix, scope = body.get("path_prefix"), body.get("scope")
    if not isinstance(prefix, str) or not prefix.startswith("/") or not isinstance(scope, str):
        raise BadControlRequest("path_prefix (starting with /) and scope are required")
    state.require_scope(prefix, scope)
    return {"ok": True}


def config(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    if request.method == "POST":
        _apply_config(state, body)
    settings = asdict(state.config)
    settings.pop("app_secret")
    return settings


def _apply_config(state: EmulatorState, body: dict[str, object]) -> None:
    known = {"grant_offline_access", *_TTL_SETTINGS, *_LIMIT_SETTINGS}
    unknown = set(body) - known
    if unknown:
        raise BadControlRequest(f"unknown settings: {', '.join(sorted(unknown))}")
    # Validate everything before changing anything, so a bad request changes nothing.
    offline = body.get("grant_offline_access", state.config.grant_offline_access)
    if not isinstance(offline, bool):
        raise BadControlRequest("grant_offline_access must be true or false")
    # A grace of 0 is how a test says "the old access token dies at the refresh".
    ttls = {
        name: _whole(body[name], name, minimum=0 if name == "old_token_grace" else 1)
        for name in _TTL_SETTINGS
        if name in body
    }
    limits = {
        name: _whole(body.get(name, getattr(state.config, name)), name, allow_none=True)
        for name in _LIMIT_SETTINGS
    }

    state.config.grant_offline_access = offline
    for name, value in ttls.items():
        setattr(state.config, name, value)
    state.set_rate_limits(limits["rate_limit_per_second"], limits["rate_limit_per_minute"])
    logger.info("config changed: %s", ", ".join(sorted(body)))


def messages(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    return {"messages": [asdict(m) for m in state.messages]}


def reset(state: EmulatorState, body: dict[str, object], request: Request) -> object:
    state.reset()
    return {"ok": True}


routes = [
    Route("/_emulator/health", _control(health), methods=["GET"]),
    Route("/_emulator/clock", _control(clock), methods=["GET", "POST"]),
    Route("/_emulator/calls", _control(calls), methods=["GET"]),
    Route("/_emulator/reset_calls", _control(reset_calls), methods=["POST"]),
    Route("/_emulator/tokens", _control(tokens), methods=["GET"]),
    Route("/_emulator/revoke", _control(revoke), methods=["POST"]),
    Route("/_emulator/faults", _control(faults), methods=["POST"]),
    Route("/_emulator/require_scope", _control(require_scope), methods=["POST"]),
    Route("/_emulator/config", _control(config), methods=["GET", "POST"]),
    Route("/_emulator/messages", _control(messages), methods=["GET"]),
    Route("/_emulator/reset", _control(reset), methods=["POST"]),
]
