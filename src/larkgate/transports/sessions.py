"""MCP sessions of both transports, kept in memory and persisted in the store.

The store holds each session (as a digest) and the user it is bound to, so a session survives
a gateway restart. Last-use times live in memory and reach the store on the periodic sweep,
which keeps a disk write off every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..config import Settings
from ..store import Store, digest

log = logging.getLogger(__name__)


@dataclass
class Session:
    session_id: str
    transport: str
    user_id: str | None
    last_seen: float = field(default_factory=time.time)
    stream: asyncio.Queue[bytes | None] | None = None


class SessionTable:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._live: dict[str, Session] = {}

    def create(self, transport: str, session_id: str, user_id: str | None = None) -> Session:
        self._store.create_session(session_id, transport, user_id)
        session = Session(session_id=session_id, transport=transport, user_id=user_id)
        self._live[session_id] = session
        return session

    def get(self, session_id: str, transport: str) -> Session | None:
        """The session, if it exists for this transport; refreshes its user binding."""
        session = self._live.get(session_id)
        record = self._store.get_session(session_id)
        if record is None:
            self._live.pop(session_id, None)
            return None
        if record.transport != transport:
            return None  # someone else's transport: not found here, untouched there
        if session is None:
            session = Session(session_id=session_id, transport=transport, user_id=record.user_id)
            self._live[session_id] = session
        session.user_id = record.user_id
        session.last_seen = time.time()
        return session

    def by_digest(self, session_digest: str) -> Session | None:
        for session in self._live.values():
            if digest(session.session_id) == session_digest:
                return session
        return None

    def end(self, session_id: str) -> bool:
        session = self._live.pop(session_id, None)
        if session is not None and session.stream is not None:
            session.stream.put_nowait(None)
        return self._store.end_session(session_id)

    def count(self) -> dict[str, int]:
        counts = {"streamable": 0, "sse": 0}
        for session in self._live.values():
            counts[session.transport] = counts.get(session.transport, 0) + 1
        return counts

    def sweep(self) -> int:
        """Persist last-use times, then forget sessions idle past the timeout."""
        for session in self._live.values():
            self._store.touch_session(session.session_id)
        cutoff = time.time() - self._settings.session_idle_timeout
        idle = [s for s in self._live.values() if s.last_seen < cutoff and s.stream is None]
        for session in idle:
            self.end(session.session_id)
        ended = self._store.end_idle_sessions(cutoff)
        if ended:
            log.info("ended %d idle sessions", ended)
        return ended
