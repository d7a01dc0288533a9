"""HTTP+SSE (2024-11-05): ``GET /sse`` opens a stream, ``POST /messages?sessionId=`` feeds it.

The stream first names its message endpoint, then carries every reply as a ``message`` event;
comment lines keep it alive through proxies that cut idle connections. The session ends with
its stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import errors
from ..authserver.bearer import EndpointGuard
from ..config import Settings
from ..instances.pool import InstancePool, PoolBusy
from .common import Rejected, check_origin, http_error, new_session_id, read_json_body, reply_bytes
from .router import Caller, Router
from .sessions import Session, SessionTable

log = logging.getLogger(__name__)

TRANSPORT = "sse"
STREAM_QUEUE_LIMIT = 256


class SseEndpoints:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionTable,
        router: Router,
        pool: InstancePool,
        guard: EndpointGuard,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._router = router
        self._pool = pool
        self._guard = guard

    async def open_stream(self, request: Request) -> Response:
        try:
            check_origin(request, self._settings)
            credential = self._guard.authenticate(request, "sse")
        except Rejected as rejected:
            return rejected.response
        session = self._guard.open_session(self._sessions, TRANSPORT, new_session_id(), credential)
        session.stream = asyncio.Queue(STREAM_QUEUE_LIMIT)
        return StreamingResponse(
            self._events(session),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
        )

    async def _events(self, session: Session) -> AsyncIterator[bytes]:
        assert session.stream is not None
        endpoint = f"/messages?sessionId={session.session_id}"
        try:
            yield f"event: endpoint\ndata: {endpoint}\n\n".encode()
            while True:
                try:
                    payload = await asyncio.wait_for(
                        session.stream.get(), self._settings.keepalive_interval
                    )
                except TimeoutError:
                    self._keep_warm(session)
                    yield b": keepalive\n\n"
                    continue
                if payload is None:
                    return
                yield b"event: message\ndata: " + payload + b"\n\n"
        finally:
            session.stream = None
            self._sessions.end(session.session_id)

    def _keep_warm(self, session: Session) -> None:
        """An open stream counts as use: its session and its user's child stay up."""
        fresh = self._sessions.get(session.session_id, TRANSPORT)
        if fresh is not None and fresh.user_id is not None:
            child = self._pool.child_of(fresh.user_id)
            if child is not None:
                child.last_used = time.monotonic()

    async def post_message(self, request: Request) -> Response:
        try:
            check_origin(request, self._settings)
            credential = self._guard.authenticate(request, "messages")
            session_id = request.query_params.get("sessionId")
            if not session_id:
                return http_error(
                    400, errors.SESSION_REQUIRED, "sessionId query parameter required"
                )
            session = self._sessions.get(session_id, TRANSPORT)
            if session is None or session.stream is None:
                return http_error(404, errors.UNKNOWN_SESSION, "unknown or ended session")
            self._guard.admit(session, credential, "messages")
            message = await read_json_body(request, self._settings)
        except Rejected as rejected:
            return rejected.response
        return Response(
            "Accepted",
            status_code=202,
            media_type="text/plain",
            background=BackgroundTask(self._answer, session, message),
        )

    async def _answer(self, session: Session, message: Any) -> None:
        caller = Caller(session.session_id, session.user_id)
        try:
            reply = await self._router.handle(caller, message)
        except PoolBusy as busy:
            reply = errors.rpc_error(
                message.get("id") if isinstance(message, dict) else None,
                errors.SERVER_ERROR,
                str(busy),
                errors.INSTANCE_BUSY,
                retry_after=busy.retry_after,
            )
        if reply is None or session.stream is None:
            return
        try:
            session.stream.put_nowait(reply_bytes(reply))
        except asyncio.QueueFull:
            log.warning("stream of an SSE session is not being read; reply dropped")
