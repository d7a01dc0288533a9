"""uvicorn's httptools protocol with a deadline and a size bound on request heads.

uvicorn bounds neither the time a client may take to send a request head nor, with httptools,
its size: a client that dribbles bytes, or sends one endless header, would hold a connection
and its buffer for ever. This subclass closes a connection whose next request head has not
arrived within the deadline (on a new connection and between keep-alive requests alike) and
answers 431 to a head past the size bound. Bodies have their own deadline and bound where they
are read (``transports.common``).

At a graceful shutdown, event streams (``/sse``), which never end by themselves, are closed at
once, and a call still running when uvicorn's grace runs out gets a 503 with a stable code
instead of a bare 500 and a traceback in the log.

httptools rather than uvicorn's pure-Python h11 protocol: it parses in C, which measurably cuts
the gateway's CPU per call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import errors
from .config import Settings

log = logging.getLogger(__name__)

HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"request head too large (code 431)"
)


# A request line's spaces, " HTTP/1.1" and CRLF, and the empty line ending the head.
REQUEST_LINE_AND_END = len(b"  HTTP/1.1\r\n\r\n")


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head past the bound."""


# A request uvicorn's shutdown cut short never learns its JSON-RPC id, so the id is null.
SHUTTING_DOWN = errors.rpc_error_bytes(
    None,
    errors.SERVER_ERROR,
    "the gateway is shutting down; please retry",
    errors.INSTANCE_UNAVAILABLE,
)
SHUTTING_DOWN_START = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(SHUTTING_DOWN)).encode()),
        (b"connection", b"close"),
    ],
}
SHUTTING_DOWN_BODY = {"type": "http.response.body", "body": SHUTTING_DOWN}


class ShutdownGuard:
    """The outermost ASGI layer: answers the requests uvicorn cancels when its graceful
    shutdown runs out, which would otherwise each leave a traceback and a bare 500."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stopping = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # Only uvicorn's end of the grace cancels a request; the task ends right here.
            log.warning("%s %s cut short by the shutdown", scope["method"], scope["path"])
            if not started:
                await send(SHUTTING_DOWN_START)
                await send(SHUTTING_DOWN_BODY)


def bounded_protocol(
    head_timeout: float, max_head_bytes: int, guard: ShutdownGuard
) -> type[HttpToolsProtocol]:
    class BoundedHeadProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = False  # from a request's first byte to the end of its head
        _head_began_in_read = False
        _head_read = 0  # bytes of reads that fell wholly inside the current head
        _head_parsed = 0  # bytes of the current head the parser has handed over
        _head_refused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._head_began_in_read = False
            super().data_received(data)
            # A read counts whole only if the head began before it and goes on after it: a
            # read may also hold the end of a body (one answered early, say 413), or whole
            # requests. An endless header is thus refused at most one read past the bound.
            if not self._in_head or self._head_began_in_read or self.transport.is_closing():
                return
            self._head_read += len(data)
            if self._head_read > max_head_bytes:
                self._refuse_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = self._head_began_in_read = True
            self._head_read = self._head_parsed = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count_parsed(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF

        def on_headers_complete(self) -> None:
            self._count_parsed(len(self.parser.get_method()) + REQUEST_LINE_AND_END)
            super().on_headers_complete()
            self._in_head = False
            self._disarm()

        def _count_parsed(self, size: int) -> None:
            # The reads above never count the read that completes a head, so a head that
            # arrives whole in one read (up to 256 KiB) would pass unbounded. What the parser
            # hands over is counted too, as sent in the usual form ("Name: value" lines), and
            # the head refused before the app sees it.
            self._head_parsed += size
            if self._head_parsed > max_head_bytes:
                self._head_refused = True
                raise HeadTooLarge

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to a parser error, and so to HeadTooLarge (after a WARNING line
            # "Invalid HTTP request received.").
            if self._head_refused:
                self._refuse_head()
            else:
                super().send_400_response(msg)

        def _refuse_head(self) -> None:
            self.transport.write(HEAD_TOO_LARGE)
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A request pipelined behind this one may already have its head (uvicorn keeps
            # the newest parsed request in ``cycle``).
            if self.cycle is None or self.cycle.response_complete:
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def shutdown(self) -> None:
            guard.stopping = True
            streaming = self.cycle is not None and self.cycle.response_started
            if streaming and not self.cycle.response_complete:
                # A response begun and not done is an event stream (every other answer is
                # written whole): it would hold the shutdown for the whole grace. Closing it
                # ends it as a client hanging up does.
                self.transport.close()
                return
            super().shutdown()

    return BoundedHeadProtocol


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How the gateway's HTTP server runs, for ``larkgate serve`` and the tests alike."""
    guard = ShutdownGuard(app)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.stop_grace) + 5,
        "timeout_keep_alive": int(settings.client_keepalive),
        # Past this many connections new ones get 503, so idle sockets cannot use up the file
        # descriptors that children and the store need.
        "limit_concurrency": settings.max_connections,
        "http": bounded_protocol(settings.head_timeout, settings.max_head_bytes, guard),
        "server_header": False,
    }
    return uvicorn.Config(guard, **(options | overrides))
