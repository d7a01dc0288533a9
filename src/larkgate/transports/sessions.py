"""MCP sessions of both transports, kept in memory and persisted in the store.

The store holds each session (as a digest) and the user it is bound to, so a session survives
a gateway restart. Last-use times live in memory and reach the store on the periodic sweep,
which keeps a disk write off every request: each session's own, and for each user the latest
of their sessions', which is what an operator sees as their last use. The store also keeps the
name and version the client gave in ``initialize``, which the login link's page shows to the
person asked to log in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..store import Store, digest

log = logging.getLogger(__name__)

MAX_CLIENT_NAME = 60
MAX_CLIENT_VERSION = 30
# Control and format characters (newlines, bidi overrides) could disguise the name on a page.
_HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def note_client(store: Store, session_id: str, client_info: Any) -> None:
    """Remember which client initialized a session; a store failure loses only the name."""
    client = client_of(client_info)
    if client is None:
        return
    try:
        store.note_session_client(session_id, *client)
    except sqlite3.Error as exc:
        log.warning("could not record the client of a session, its login page names none: %s", exc)


def client_of(client_info: Any) -> tuple[str, str] | None:
    """(name, version) from an ``initialize`` clientInfo, cleaned and cut to a short line.

    The client chose both itself: they are shown as its claim, never trusted, and escaped where
    they are shown.
    """
    if not isinstance(client_info, dict):
        return None
    name = _clean(client_info.get("name"), MAX_CLIENT_NAME)
    version = _clean(client_info.get("version"), MAX_CLIENT_VERSION)
    return (name, version) if name or version else None


def _clean(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return " ".join(_HIDDEN.sub(" ", value[: limit * 4]).split())[:limit]


@dataclass
class Session:
    session_id: str
    transport: str
    user_id: str | None
    last_seen: float = field(default_factory=time.time)
    stream: asyncio.Queue[bytes | None] | None = None
    # The last use the store holds; the sweep writes only sessions used since.
    stored_last_seen: float = 0.0


class SessionTable:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._live: dict[str, Session] = {}

    def create(self, transport: str, session_id: str, user_id: str | None = None) -> Session:
        self._store.create_session(session_id, transport, user_id)
        session = Session(session_id=session_id, transport=transport, user_id=user_id)
        session.stored_last_seen = session.last_seen
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
            session = Session(
                session_id=session_id,
                transport=transport,
                user_id=record.user_id,
                stored_last_seen=record.last_seen_at,
            )
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
        self._store_last_use()
        cutoff = time.time() - self._settings.session_idle_timeout
        idle = [s for s in self._live.values() if s.last_seen < cutoff and s.stream is None]
        for session in idle:
            self.end(session.session_id)
        ended = self._store.end_idle_sessions(cutoff)
        if ended:
            log.info("ended %d idle sessions", ended)
        return ended

    def _store_last_use(self) -> None:
        """One write for every session used since the last sweep, and for their users."""
        now = time.time()
        for session in self._live.values():
            if session.stream is not None:
                session.last_seen = now  # an open stream is a client in use (as keep-alives say)
        used = [s for s in self._live.values() if s.last_seen > s.stored_last_seen]
        if not used:
            return
        users: dict[str, float] = {}
        for session in used:
            if session.user_id is not None:
                users[session.user_id] = max(users.get(session.user_id, 0.0), session.last_seen)
        self._store.record_last_use({s.session_id: s.last_seen for s in used}, users)
        for session in used:
            session.stored_last_seen = session.last_seen
