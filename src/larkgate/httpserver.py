"""uvicorn's h11 protocol with a deadline on request heads.

uvicorn bounds the size of a request head (h11 refuses one past 16 KiB) but not the time a
client may take to send it: a client that connects and dribbles bytes would hold its
connection for ever. This subclass closes a connection whose next request head has not
arrived within the deadline, on a new connection and between keep-alive requests alike.
Bodies have their own deadline where they are read (``transports.common``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def head_timeout_protocol(head_timeout: float) -> type[H11Protocol]:
    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle and self.cycle is not None:
                self._disarm()  # a whole request head arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
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

    return HeadTimeoutProtocol
