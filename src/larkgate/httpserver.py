"""uvicorn's httptools protocol with a deadline and a size bound on request heads.

uvicorn bounds neither the time a client may take to send a request head nor, with httptools,
its size: a client that dribbles bytes, or sends one endless header, would hold a connection
and its buffer for ever. This subclass closes a connection whose next request head has not
arrived within the deadline (on a new connection and between keep-alive requests alike) and
answers 431 to a head past the size bound. Bodies have their own deadline and bound where they
are read (``transports.common``).

httptools rather than uvicorn's pure-Python h11 protocol: it parses in C, which measurably cuts
the gateway's CPU per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings

HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"request head too large (code 431)"
)


def bounded_protocol(head_timeout: float, max_head_bytes: int) -> type[HttpToolsProtocol]:
    class BoundedHeadProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _awaiting_head = True
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            counting = self._awaiting_head
            super().data_received(data)
            # Only reads that began and ended inside a head count: the tail of a body that
            # was answered early (a 413) must not count against the next head. A head is
            # refused at most one read past the bound.
            if not counting or not self._awaiting_head or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_head_bytes:
                self.transport.write(HEAD_TOO_LARGE)
                self.transport.close()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._awaiting_head = False
            self._head_bytes = 0
            self._disarm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._awaiting_head = True  # whatever comes next on this connection is a new head
            self._head_bytes = 0

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

    return BoundedHeadProtocol


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How the gateway's HTTP server runs, for ``larkgate serve`` and the tests alike."""
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
        "http": bounded_protocol(settings.head_timeout, settings.max_head_bytes),
        "server_header": False,
    }
    return uvicorn.Config(app, **(options | overrides))
