"""The record of every call that reached the emulated Feishu, for tests to inspect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

TokenKind = Literal["user", "tenant", "app", "refresh", "code", "none", "invalid"]


@dataclass(frozen=True)
class CallRecord:
    """One request and its answer. Tokens appear only as fingerprints.

    token_kind says what credential the call carried: a bearer token (user, tenant, app,
    invalid, none), or on the OAuth token endpoints the refresh token or code in the body.
    open_id is the user that credential belongs to, when it belongs to one.
    """

    time: float
    method: str
    path: str
    query: str
    token_kind: TokenKind
    open_id: str | None
    token_fingerprint: str | None
    status: int
    code: int | None
    grant_type: str | None = None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class CallLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[CallRecord] = []

    def add(self, record: CallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def matching(self, path_prefix: str = "") -> list[CallRecord]:
        with self._lock:
            return [c for c in self._calls if c.path.startswith(path_prefix)]

    def __iter__(self) -> Iterator[CallRecord]:
        return iter(self.matching())

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)
