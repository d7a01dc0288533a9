"""Everything one emulator remembers, in one object tests can reach in-process."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from .apptokens import AppTokens
from .bitable import BitableStore
from .clock import Clock
from .config import EmulatorConfig
from .faults import FaultPlan, RateLimiter
from .grants import GrantBook
from .recording import CallLog


@dataclass(frozen=True)
class ScopeRequirement:
    path_prefix: str
    scope: str


@dataclass(frozen=True)
class SentMessage:
    message_id: str
    sender_open_id: str | None
    receive_id_type: str
    receive_id: str
    msg_type: str
    content: str
    sent_at: float


class EmulatorState:
    """The emulator's memory: config, clock, grants, records, faults and fake data."""

    def __init__(self, config: EmulatorConfig) -> None:
        _check_limits(config.rate_limit_per_second, config.rate_limit_per_minute)
        # A private copy: runtime changes through /_emulator/config must not leak into the
        # caller's object, which may configure the next emulator too.
        self.config = dataclasses.replace(config, users=list(config.users))
        self._initial_config = dataclasses.replace(config, users=list(config.users))
        self.clock = Clock()
        self.grants = GrantBook(self.config, self.clock)
        self.app_tokens = AppTokens(self.config, self.clock)
        self.calls = CallLog()
        self.faults = FaultPlan()
        self.rate_limiter = RateLimiter(self.config, self.clock)
        self.bitable = BitableStore()
        self._lock = threading.Lock()
        self._scope_requirements: list[ScopeRequirement] = []
        self._messages: list[SentMessage] = []
        self._documents: dict[str, str] = {}

    def require_scope(self, path_prefix: str, scope: str) -> None:
        with self._lock:
            self._scope_requirements.append(ScopeRequirement(path_prefix, scope))

    def clear_scope_requirements(self) -> None:
        with self._lock:
            self._scope_requirements.clear()

    def scopes_required_for(self, path: str) -> list[str]:
        with self._lock:
            return [r.scope for r in self._scope_requirements if path.startswith(r.path_prefix)]

    def record_message(self, message: SentMessage) -> None:
        with self._lock:
            self._messages.append(message)

    @property
    def messages(self) -> list[SentMessage]:
        with self._lock:
            return list(self._messages)

    def put_document(self, document_id: str, content: str) -> None:
        """Store a document's plain text, as ``raw_content`` serves it to every caller."""
        with self._lock:
            self._documents[document_id] = content

    def document(self, document_id: str) -> str | None:
        with self._lock:
            return self._documents.get(document_id)

    def set_rate_limits(self, per_second: int | None, per_minute: int | None) -> None:
        _check_limits(per_second, per_minute)
        self.config.rate_limit_per_second = per_second
        self.config.rate_limit_per_minute = per_minute
        self.rate_limiter.reset()

    def reset(self) -> None:
        """Return to how the emulator started: no tokens or calls, first config, true time."""
        for setting in dataclasses.fields(EmulatorConfig):
            # In place: the grant book and rate limiter hold this very config object.
            value = getattr(self._initial_config, setting.name)
            setattr(self.config, setting.name, list(value) if setting.name == "users" else value)
        self.clock.reset()
        self.grants.reset()
        self.app_tokens.reset()
        self.calls.clear()
        self.faults.clear()
        self.rate_limiter.reset()
        self.bitable.reset()
        with self._lock:
            self._scope_requirements.clear()
            self._messages.clear()
            self._documents.clear()


def _check_limits(*limits: int | None) -> None:
    if any(limit is not None and limit < 1 for limit in limits):
        raise ValueError("a rate limit must be a positive number of calls, or None for none")
