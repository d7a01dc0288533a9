"""Streamable HTTP at ``/mcp``: POST messages, DELETE to end, GET answered 405.

The gateway mints the ``Mcp-Session-Id`` on ``initialize``; an unknown id is a 404 so that the
client starts over (which is also what happens after the gateway restarts and the id was
ended). Replies are plain JSON; lark-mcp never sends server-initiated messages, so no stream
is offered on GET.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import errors
from ..authserver.bearer import Credential, EndpointGuard
from ..config import Settings
from ..instances.pool import PoolBusy
from .common import Rejected, check_origin, http_error, new_session_id, read_json_body, reply_bytes
from .router import SUPPORTED_VERSIONS, Caller, Router
from .sessions import SessionTable

log = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
TRANSPORT = "streamable"
ENDPOINT = "mcp"


class StreamableEndpoint:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionTable,
        router: Router,
        guard: EndpointGuard,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._router = router
        self._guard = guard

    async def handle(self, request: Request) -> Response:
        try:
            check_origin(request, self._settings)
            credential = self._guard.authenticate(request, ENDPOINT)
            if request.method == "POST":
                return await self._post(request, credential)
            if request.method == "DELETE":
                return self._delete(request, credential)
            return Response(status_code=405, headers={"Allow": "POST, DELETE"})
        except Rejected as rejected:
            return rejected.response

    async def _post(self, request: Request, credential: Credential | None) -> Response:
        accept = request.headers.get("accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return http_error(
                406, errors.BAD_ACCEPT, "Accept must list application/json and text/event-stream"
            )
        if not request.headers.get("content-type", "").startswith("application/json"):
            return http_error(
                415, errors.BAD_CONTENT_TYPE, "Content-Type must be application/json"
            )
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_VERSIONS:
            return http_error(
                400,
                errors.BAD_PROTOCOL_VERSION,
                f"unsupported MCP-Protocol-Version {version[:40]!r}",
            )
        message = await read_json_body(request, self._settings)

        session_id = request.headers.get(SESSION_HEADER)
        headers: dict[str, str] = {}
        if session_id is None:
            if not _is_initialize(message):
                return _no_session_answer(message)
            session_id = new_session_id()
            self._guard.open_session(self._sessions, TRANSPORT, session_id, credential)
            headers["Mcp-Session-Id"] = session_id
        else:
            session = self._sessions.get(session_id, TRANSPORT)
            if session is None:
                return http_error(404, errors.UNKNOWN_SESSION, "unknown or ended session")
            self._guard.admit(session, credential, ENDPOINT)
            if _is_initialize(message):
                return http_error(400, errors.ALREADY_INITIALIZED, "session already initialized")
        session = self._sessions.get(session_id, TRANSPORT)
        assert session is not None

        try:
            reply = await self._router.handle(Caller(session_id, session.user_id), message)
        except PoolBusy as busy:
            return JSONResponse(
                errors.rpc_error(
                    _first_id(message),
                    errors.SERVER_ERROR,
                    str(busy),
                    errors.INSTANCE_BUSY,
                    retry_after=busy.retry_after,
                ),
                status_code=503,
                headers={"Retry-After": str(busy.retry_after)},
            )
        if reply is None:
            return Response(status_code=202, headers=headers)
        return Response(reply_bytes(reply), media_type="application/json", headers=headers)

    def _delete(self, request: Request, credential: Credential | None) -> Response:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return http_error(400, errors.SESSION_REQUIRED, "Mcp-Session-Id header required")
        session = self._sessions.get(session_id, TRANSPORT)
        if session is None:
            return http_error(404, errors.UNKNOWN_SESSION, "unknown or ended session")
        self._guard.admit(session, credential, ENDPOINT)
        self._sessions.end(session_id)
        return Response(status_code=204)


def _is_initialize(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "initialize"


def _first_id(message: Any) -> Any:
    if isinstance(message, dict):
        return message.get("id")
    return None


def _no_session_answer(message: Any) -> Response:
    """A 400 with an ordinary JSON-RPC error, so clients probing with server/discover fall back."""
    method = message.get("method") if isinstance(message, dict) else None
    if method == "server/discover":
        body = errors.rpc_error(
            _first_id(message),
            errors.METHOD_NOT_FOUND,
            "server/discover is not supported; initialize a session instead",
            errors.SESSION_REQUIRED,
        )
        return JSONResponse(body, status_code=400)
    return http_error(
        400, errors.SESSION_REQUIRED, "Mcp-Session-Id header required; send initialize"
    )
