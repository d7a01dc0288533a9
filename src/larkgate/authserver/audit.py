"""Audit lines for registrations, grants, token rotation, keys and revocations.

Each line names the event and who and what it concerns: hashed user, client id, grant or key
id, address. Never a token, code, verifier or key: those ids are public by design. Values a
client chose (its name) are quoted, so a newline in them cannot forge a line.
"""

from __future__ import annotations

import logging

from ..userkey import user_key

log = logging.getLogger(__name__)


class _Fields:
    """Formats the fields only if the line is emitted."""

    def __init__(self, fields: dict[str, str | None]) -> None:
        self._fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self._fields.items() if v is not None)


def record(event: str, *, user_id: str | None = None, **fields: str | None) -> None:
    shown: dict[str, str | None] = {"user": user_key(user_id) if user_id else None, **fields}
    log.info("%s %s", event, _Fields(shown))
