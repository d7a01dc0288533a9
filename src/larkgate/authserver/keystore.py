"""Personal access keys, the key page's browser logins, and which sessions a credential bound."""

from __future__ import annotations

from dataclasses import dataclass

from ..store import digest
from .db import AuthDb
from .tokens import new_access_key


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    name: str
    created_at: float
    last_used_at: float | None


class KeyStore:
    def __init__(self, db: AuthDb) -> None:
        self._db = db

    # -- personal access keys --------------------------------------------------------------

    def add_key(self, user_id: str, name: str, now: float, limit: int) -> tuple[str, str] | None:
        """(key id, key) for a new key, or None when the user already holds ``limit``."""
        key_id, key = new_access_key()
        with self._db.tx() as db:
            held = db.execute(
                "SELECT COUNT(*) FROM auth_keys WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            if held >= limit:
                return None
            db.execute(
                "INSERT INTO auth_keys VALUES (?, ?, ?, ?, ?, NULL)",
                (key_id, digest(key), user_id, name, now),
            )
        return key_id, key

    def key_owner(self, key: str) -> tuple[str, str] | None:
        """(key id, user id) of a live key."""
        rows = self._db.query(
            "SELECT key_id, user_id FROM auth_keys WHERE digest = ?", (digest(key),)
        )
        return (rows[0]["key_id"], rows[0]["user_id"]) if rows else None

    def touch_key(self, key_id: str, now: float) -> None:
        with self._db.tx() as db:
            db.execute("UPDATE auth_keys SET last_used_at = ? WHERE key_id = ?", (now, key_id))

    def list_keys(self, user_id: str) -> list[AccessKey]:
        rows = self._db.query(
            "SELECT key_id, name, created_at, last_used_at FROM auth_keys WHERE user_id = ? "
            "ORDER BY created_at",
            (user_id,),
        )
        return [
            AccessKey(r["key_id"], r["name"], r["created_at"], r["last_used_at"]) for r in rows
        ]

    def delete_key(self, user_id: str, key_id: str) -> bool:
        with self._db.tx() as db:
            cur = db.execute(
                "DELETE FROM auth_keys WHERE key_id = ? AND user_id = ?", (key_id, user_id)
            )
            return cur.rowcount == 1

    # -- browser logins to the key page ----------------------------------------------------

    def put_web_login(self, subject_id: str, browser_digest: str, now: float, ttl: float) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM auth_web_logins WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_web_logins VALUES (?, ?, ?)",
                (digest(subject_id), browser_digest, now + ttl),
            )

    def take_web_login(self, subject_digest: str) -> tuple[str, float] | None:
        """(browser digest, expiry) of the key-page login whose Feishu login came back."""
        with self._db.tx() as db:
            row = db.execute(
                "DELETE FROM auth_web_logins WHERE digest = ? "
                "RETURNING browser_digest, expires_at",
                (subject_digest,),
            ).fetchone()
        return (str(row[0]), float(row[1])) if row is not None else None

    def put_web_session(self, secret: str, user_id: str, now: float, ttl: float) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM auth_web_sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_web_sessions VALUES (?, ?, ?)",
                (digest(secret), user_id, now + ttl),
            )

    def web_session_user(self, secret: str, now: float) -> str | None:
        rows = self._db.query(
            "SELECT user_id FROM auth_web_sessions WHERE digest = ? AND expires_at > ?",
            (digest(secret), now),
        )
        return str(rows[0]["user_id"]) if rows else None

    def end_web_session(self, secret: str) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM auth_web_sessions WHERE digest = ?", (digest(secret),))

    # -- MCP sessions a credential bound ---------------------------------------------------

    def bind_session_credential(
        self, session_id: str, user_id: str, needs_credential: bool
    ) -> None:
        with self._db.tx() as db:
            # Sessions end in the gateway's own table (same file); forget their bindings too.
            db.execute(
                "DELETE FROM auth_session_credentials "
                "WHERE session_digest NOT IN (SELECT digest FROM sessions)"
            )
            db.execute(
                "INSERT OR REPLACE INTO auth_session_credentials VALUES (?, ?, ?)",
                (digest(session_id), user_id, int(needs_credential)),
            )

    def session_needs_credential(self, session_id: str) -> bool:
        rows = self._db.query(
            "SELECT needs_credential FROM auth_session_credentials WHERE session_digest = ?",
            (digest(session_id),),
        )
        return bool(rows and rows[0]["needs_credential"])
