"""What an operator can see and do on a running gateway, shared by the page, the API and CLI.

Users are named by their stable hash (``user_key``) everywhere an operator types or reads an
id; the Feishu display name is shown beside it to people who hold the admin token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..store import UserRecord
from ..userkey import user_key

if TYPE_CHECKING:
    from ..app import Gateway
    from ..ops import Operations


SESSION_PREFIX_MIN = 8


class ActionRefused(Exception):
    """The action does not apply (unknown id, or an instance the pool manages by itself)."""


@dataclass(frozen=True)
class InstanceView:
    id: str
    role: str
    state: str
    user: str | None
    user_name: str
    pid: int
    age_seconds: float
    rss_bytes: int | None
    cpu_percent: float | None
    in_flight: int
    rss_history: list[int]
    cpu_history: list[float]


@dataclass(frozen=True)
class UserView:
    user: str
    name: str
    login: str
    reason: str
    last_seen_at: float
    sessions: int
    instance: str | None


def login_state(user: UserRecord) -> str:
    if user.has_tokens and not user.needs_login:
        return "logged in"
    if user.has_tokens:
        return "needs login"
    return "logged out"


def find_user(users: list[UserRecord], ref: str) -> UserRecord | None:
    """A user by open_id or by hash."""
    for user in users:
        if ref in (user.user_id, user_key(user.user_id)):
            return user
    return None


class AdminActions:
    def __init__(self, gateway: Gateway, ops: Operations) -> None:
        self._gateway = gateway
        self._ops = ops

    # -- seeing ------------------------------------------------------------------------------

    def instances(self) -> list[InstanceView]:
        names = {u.user_id: u.name for u in self._gateway.store.list_users()}
        now = time.time()
        found = []
        for role, child in self._gateway.pool.instances():
            series = self._ops.sampler.series_of(child.child_id)
            samples = list(series.samples) if series else []
            latest = samples[-1] if samples else None
            state = role if role != "user" else ("idle" if child.idle else "ready")
            if not child.alive:
                state = "exited"
            found.append(
                InstanceView(
                    id=child.child_id,
                    role=role,
                    state=state,
                    user=user_key(child.user_id) if child.user_id else None,
                    user_name=names.get(child.user_id or "", ""),
                    pid=child.pid,
                    age_seconds=now - series.started_at if series else 0.0,
                    rss_bytes=latest.rss if latest else None,
                    cpu_percent=latest.cpu_percent if latest else None,
                    in_flight=child.in_flight,
                    rss_history=[s.rss for s in samples],
                    cpu_history=[s.cpu_percent for s in samples],
                )
            )
        return found

    def users(self) -> list[UserView]:
        store = self._gateway.store
        sessions: dict[str, int] = {}
        for session in store.list_sessions():
            if session.user_id is not None:
                sessions[session.user_id] = sessions.get(session.user_id, 0) + 1
        found = []
        for user in store.list_users():
            child = self._gateway.pool.child_of(user.user_id)
            found.append(
                UserView(
                    user=user_key(user.user_id),
                    name=user.name,
                    login=login_state(user),
                    reason=user.needs_login or "",
                    last_seen_at=user.last_seen_at,
                    sessions=sessions.get(user.user_id, 0),
                    instance=child.child_id if child is not None and child.alive else None,
                )
            )
        return found

    def status(self) -> dict[str, Any]:
        gateway = self._ops.sampler.gateway_latest()
        return {
            "gateway": {
                "started_at": self._ops.started_at,
                "rss_bytes": gateway.rss if gateway else None,
                "cpu_percent": gateway.cpu_percent if gateway else None,
                "requests_per_second": self._ops.metrics.rate,
                "sessions": self._gateway.sessions.count(),
            },
            "instances": [asdict(i) for i in self.instances()],
            "users": [asdict(u) for u in self.users()],
            "alerts": [
                {
                    "at": r.alert.at,
                    "kind": r.alert.kind,
                    "status": r.alert.status.value,
                    "severity": r.alert.severity.value,
                    "title": r.alert.title,
                    "result": r.result,
                }
                for r in self._ops.alerts.recent
            ],
        }

    # -- doing -------------------------------------------------------------------------------

    def _user(self, ref: str) -> UserRecord:
        user = find_user(self._gateway.store.list_users(), ref)
        if user is None:
            raise ActionRefused(f"no user {ref!r}")
        return user

    async def stop_instance(self, instance_id: str) -> str:
        """Stop a user's child; it starts again on that user's next call. Returns the user."""
        for role, child in self._gateway.pool.instances():
            if child.child_id != instance_id:
                continue
            if role != "user" or child.user_id is None:
                raise ActionRefused(
                    f"instance {instance_id} is the pool's {role}; the pool replaces it by itself"
                )
            await self._gateway.pool.stop_user(child.user_id)
            return user_key(child.user_id)
        raise ActionRefused(f"no running instance {instance_id!r}")

    def end_sessions(self, user_ref: str) -> int:
        """End every MCP session bound to the user (open SSE streams close)."""
        user = self._user(user_ref)
        ended = 0
        for session in self._gateway.store.list_sessions():
            if session.user_id != user.user_id:
                continue
            live = self._gateway.sessions.by_digest(session.digest)
            if live is not None:
                self._gateway.sessions.end(live.session_id)
                ended += 1
            elif self._gateway.store.end_session_digest(session.digest):
                ended += 1
        return ended

    def end_session(self, digest_prefix: str) -> str:
        """End the one session whose digest starts with ``digest_prefix``; returns its digest."""
        found = [
            s for s in self._gateway.store.list_sessions() if s.digest.startswith(digest_prefix)
        ]
        if len(digest_prefix) < SESSION_PREFIX_MIN or len(found) != 1:
            raise ActionRefused(f"no single session starts with {digest_prefix!r}")
        digest = found[0].digest
        live = self._gateway.sessions.by_digest(digest)
        if live is not None:
            self._gateway.sessions.end(live.session_id)
        else:
            self._gateway.store.end_session_digest(digest)
        return digest

    async def logout(self, user_ref: str) -> int:
        """Forget the user's Feishu tokens, end their sessions and stop their instance."""
        user = self._user(user_ref)
        ended = self.end_sessions(user_ref)
        self._gateway.store.logout_user(user.user_id, "logged out by an operator")
        await self._gateway.pool.stop_user(user.user_id)
        return ended
