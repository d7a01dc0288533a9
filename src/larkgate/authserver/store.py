"""The authorization server's records, in their own tables of the gateway's SQLite file.

Clients, pending authorizations, codes, grants and their tokens, personal access keys, browser
logins to the key page, and which MCP sessions a credential bound. Every secret (code, token,
key, cookie, request id) is kept only as its SHA-256 digest. Times are the gateway clock's,
passed in by the caller, so tests can move them. Expired rows are swept when a table gains a row.

A grant is one user's consent to one client for one resource; its tokens are rows that point at
it. Revoking a grant deletes its tokens; a replayed code or refresh token revokes its grant.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..store import digest
from .tokens import ACCESS_PREFIX, CLIENT_PREFIX, REFRESH_PREFIX, mint, new_access_key, short_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    created_at REAL NOT NULL,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS auth_requests (
    digest TEXT PRIMARY KEY,
    subject_digest TEXT UNIQUE,
    browser_digest TEXT NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    state TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_codes (
    digest TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    replayed INTEGER NOT NULL DEFAULT 0,
    grant_id TEXT
);
CREATE TABLE IF NOT EXISTS auth_grants (
    grant_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at REAL NOT NULL,
    used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_tokens (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    rotated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS auth_tokens_grant ON auth_tokens (grant_id);
CREATE TABLE IF NOT EXISTS auth_keys (
    key_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL
);
CREATE TABLE IF NOT EXISTS auth_web_logins (
    digest TEXT PRIMARY KEY,
    browser_digest TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_web_sessions (
    digest TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_session_credentials (
    session_digest TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    needs_credential INTEGER NOT NULL
);
"""

ACCESS = "access"
REFRESH = "refresh"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    redirect_uris: list[str]
    created_at: float


@dataclass(frozen=True)
class AuthorizationRequest:
    """An /authorize call waiting for the user's consent and Feishu login."""

    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    resource: str
    scope: str
    browser_digest: str
    expires_at: float


@dataclass(frozen=True)
class CodeGrant:
    """What a code was issued for; the token endpoint checks a redemption against it."""

    client_id: str
    user_id: str
    redirect_uri: str
    code_challenge: str
    resource: str
    scope: str
    expires_at: float


@dataclass(frozen=True)
class IssuedTokens:
    grant_id: str
    user_id: str
    access_token: str
    refresh_token: str
    scope: str


@dataclass(frozen=True)
class AccessTokenOwner:
    user_id: str
    client_id: str
    audience: str
    grant_id: str


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    name: str
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True)
class ConnectedClient:
    grant_id: str
    client_name: str
    resource: str
    created_at: float
    used_at: float


class Redeemed(Enum):
    """Why a code or refresh token was not accepted."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    WRONG_CLIENT = "wrong_client"
    WRONG_RESOURCE = "wrong_resource"


class AuthStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    # -- clients ---------------------------------------------------------------------------

    def add_client(
        self, name: str, redirect_uris: list[str], now: float, unused_ttl: float
    ) -> Client:
        client = Client(mint(CLIENT_PREFIX), name, redirect_uris, now)
        with self._tx() as db:
            db.execute(
                "DELETE FROM auth_clients WHERE used_at IS NULL AND created_at < ?",
                (now - unused_ttl,),
            )
            db.execute(
                "INSERT INTO auth_clients VALUES (?, ?, ?, ?, NULL)",
                (client.client_id, name, json.dumps(redirect_uris), now),
            )
        return client

    def get_client(self, client_id: str) -> Client | None:
        rows = self._query("SELECT * FROM auth_clients WHERE client_id = ?", (client_id,))
        if not rows:
            return None
        row = rows[0]
        return Client(
            row["client_id"], row["name"], json.loads(row["redirect_uris"]), row["created_at"]
        )

    # -- authorization requests (consent page, then the Feishu login) ----------------------

    def put_request(self, request_id: str, request: AuthorizationRequest, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_requests WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_requests VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest(request_id),
                    request.browser_digest,
                    request.client_id,
                    request.redirect_uri,
                    request.state,
                    request.code_challenge,
                    request.resource,
                    request.scope,
                    request.expires_at,
                ),
            )

    def get_request(self, request_id: str) -> AuthorizationRequest | None:
        """A request still waiting for consent (not yet approved)."""
        rows = self._query(
            "SELECT * FROM auth_requests WHERE digest = ? AND subject_digest IS NULL",
            (digest(request_id),),
        )
        return _request(rows[0]) if rows else None

    def approve_request(self, request_id: str, subject_id: str) -> bool:
        """Hand the request to a Feishu login; a consent form is good for one approval only."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE auth_requests SET subject_digest = ? "
                "WHERE digest = ? AND subject_digest IS NULL",
                (digest(subject_id), digest(request_id)),
            )
            return cur.rowcount == 1

    def drop_request(self, request_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_requests WHERE digest = ?", (digest(request_id),))

    def take_request(self, subject_digest: str) -> AuthorizationRequest | None:
        """Consume the request whose Feishu login just came back (expired ones included)."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM auth_requests WHERE subject_digest = ? RETURNING *", (subject_digest,)
            )
            cur.row_factory = sqlite3.Row
            row = cur.fetchone()
        return _request(row) if row is not None else None

    # -- codes, grants and tokens ----------------------------------------------------------

    def put_code(self, code: str, grant: CodeGrant, now: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_codes WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_codes (digest, client_id, user_id, redirect_uri, "
                "code_challenge, resource, scope, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest(code),
                    grant.client_id,
                    grant.user_id,
                    grant.redirect_uri,
                    grant.code_challenge,
                    grant.resource,
                    grant.scope,
                    grant.expires_at,
                ),
            )

    def redeem_code(self, code: str) -> CodeGrant | Redeemed:
        """Use a code up. A second use revokes whatever the first one was granted."""
        code_digest = digest(code)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE auth_codes SET used = 1 WHERE digest = ? AND used = 0 RETURNING *",
                (code_digest,),
            )
            cur.row_factory = sqlite3.Row
            row = cur.fetchone()
            if row is not None:
                return CodeGrant(
                    row["client_id"],
                    row["user_id"],
                    row["redirect_uri"],
                    row["code_challenge"],
                    row["resource"],
                    row["scope"],
                    row["expires_at"],
                )
            cur = db.execute(
                "UPDATE auth_codes SET replayed = 1 WHERE digest = ? RETURNING grant_id",
                (code_digest,),
            )
            replayed = cur.fetchone()
            if replayed is None:
                return Redeemed.UNKNOWN
            if replayed[0] is not None:
                _delete_grant(db, replayed[0])
            return Redeemed.REPLAYED

    def issue_for_code(
        self, code: str, grant: CodeGrant, *, now: float, access_ttl: float, refresh_ttl: float
    ) -> IssuedTokens | None:
        """A new grant and its first tokens; None if the code was replayed meanwhile."""
        code_digest = digest(code)
        grant_id = short_id()
        with self._tx() as db:
            replayed = db.execute(
                "SELECT replayed FROM auth_codes WHERE digest = ?", (code_digest,)
            ).fetchone()
            if replayed is None or replayed[0]:
                return None
            db.execute("DELETE FROM auth_tokens WHERE expires_at < ?", (now,))
            db.execute(
                "DELETE FROM auth_grants WHERE grant_id NOT IN (SELECT grant_id FROM auth_tokens)"
            )
            db.execute(
                "INSERT INTO auth_grants VALUES (?, ?, ?, ?, ?, ?, ?)",
                (grant_id, grant.client_id, grant.user_id, grant.resource, grant.scope, now, now),
            )
            db.execute(
                "UPDATE auth_codes SET grant_id = ? WHERE digest = ?", (grant_id, code_digest)
            )
            db.execute(
                "UPDATE auth_clients SET used_at = ? WHERE client_id = ?", (now, grant.client_id)
            )
            access, refresh = _insert_pair(db, grant_id, now, access_ttl, refresh_ttl)
        return IssuedTokens(grant_id, grant.user_id, access, refresh, grant.scope)

    def refresh(
        self,
        refresh_token: str,
        client_id: str,
        resource: str | None,
        *,
        now: float,
        access_ttl: float,
        refresh_ttl: float,
    ) -> IssuedTokens | tuple[Redeemed, str | None]:
        """Rotate a refresh token. Presenting a rotated one again revokes its whole grant.

        On refusal, returns why and the grant concerned (for the audit line), if any.
        """
        with self._tx() as db:
            cur = db.execute(
                "SELECT t.expires_at, t.rotated, g.* FROM auth_tokens t "
                "JOIN auth_grants g ON g.grant_id = t.grant_id "
                "WHERE t.digest = ? AND t.kind = ?",
                (digest(refresh_token), REFRESH),
            )
            cur.row_factory = sqlite3.Row
            row = cur.fetchone()
            if row is None:
                return Redeemed.UNKNOWN, None
            grant_id = str(row["grant_id"])
            if row["rotated"]:
                _delete_grant(db, grant_id)
                return Redeemed.REPLAYED, grant_id
            if row["expires_at"] <= now:
                return Redeemed.EXPIRED, grant_id
            if row["client_id"] != client_id:
                return Redeemed.WRONG_CLIENT, grant_id
            if resource is not None and resource != row["resource"]:
                return Redeemed.WRONG_RESOURCE, grant_id
            # The rotated token stays (marked) until it expires, so a replay is recognised.
            db.execute(
                "UPDATE auth_tokens SET rotated = 1 WHERE digest = ?", (digest(refresh_token),)
            )
            db.execute("UPDATE auth_grants SET used_at = ? WHERE grant_id = ?", (now, grant_id))
            access, refresh = _insert_pair(db, grant_id, now, access_ttl, refresh_ttl)
        return IssuedTokens(grant_id, row["user_id"], access, refresh, row["scope"])

    def access_token_owner(self, token: str, now: float) -> AccessTokenOwner | None:
        rows = self._query(
            "SELECT g.user_id, g.client_id, g.resource, g.grant_id FROM auth_tokens t "
            "JOIN auth_grants g ON g.grant_id = t.grant_id "
            "WHERE t.digest = ? AND t.kind = ? AND t.expires_at > ?",
            (digest(token), ACCESS, now),
        )
        if not rows:
            return None
        row = rows[0]
        return AccessTokenOwner(row["user_id"], row["client_id"], row["resource"], row["grant_id"])

    def revoke_token(self, token: str, client_id: str | None) -> tuple[str, str, str] | None:
        """Revoke one token (a refresh token takes its grant along): (kind, grant, user)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT t.kind, g.grant_id, g.client_id, g.user_id FROM auth_tokens t "
                "JOIN auth_grants g ON g.grant_id = t.grant_id WHERE t.digest = ?",
                (digest(token),),
            ).fetchone()
            if row is None or (client_id is not None and row[2] != client_id):
                return None
            if row[0] == REFRESH:
                _delete_grant(db, row[1])
            else:
                db.execute("DELETE FROM auth_tokens WHERE digest = ?", (digest(token),))
            return str(row[0]), str(row[1]), str(row[3])

    def revoke_grant(self, user_id: str, grant_id: str) -> bool:
        with self._tx() as db:
            owned = db.execute(
                "SELECT 1 FROM auth_grants WHERE grant_id = ? AND user_id = ?",
                (grant_id, user_id),
            ).fetchone()
            if owned is None:
                return False
            _delete_grant(db, grant_id)
            return True

    def connected_clients(self, user_id: str, now: float) -> list[ConnectedClient]:
        rows = self._query(
            "SELECT g.grant_id, COALESCE(c.name, g.client_id) AS name, g.resource, "
            "g.created_at, g.used_at FROM auth_grants g "
            "LEFT JOIN auth_clients c ON c.client_id = g.client_id "
            "WHERE g.user_id = ? AND EXISTS (SELECT 1 FROM auth_tokens t "
            "WHERE t.grant_id = g.grant_id AND t.expires_at > ? AND t.rotated = 0) "
            "ORDER BY g.used_at DESC",
            (user_id, now),
        )
        return [
            ConnectedClient(r["grant_id"], r["name"], r["resource"], r["created_at"], r["used_at"])
            for r in rows
        ]

    # -- personal access keys --------------------------------------------------------------

    def add_key(self, user_id: str, name: str, now: float, limit: int) -> tuple[str, str] | None:
        """(key id, key) for a new key, or None when the user already holds ``limit``."""
        key_id, key = new_access_key()
        with self._tx() as db:
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
        rows = self._query(
            "SELECT key_id, user_id FROM auth_keys WHERE digest = ?", (digest(key),)
        )
        return (rows[0]["key_id"], rows[0]["user_id"]) if rows else None

    def touch_key(self, key_id: str, now: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE auth_keys SET last_used_at = ? WHERE key_id = ?", (now, key_id))

    def list_keys(self, user_id: str) -> list[AccessKey]:
        rows = self._query(
            "SELECT key_id, name, created_at, last_used_at FROM auth_keys WHERE user_id = ? "
            "ORDER BY created_at",
            (user_id,),
        )
        return [
            AccessKey(r["key_id"], r["name"], r["created_at"], r["last_used_at"]) for r in rows
        ]

    def delete_key(self, user_id: str, key_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM auth_keys WHERE key_id = ? AND user_id = ?", (key_id, user_id)
            )
            return cur.rowcount == 1

    # -- browser logins to the key page ----------------------------------------------------

    def put_web_login(self, subject_id: str, browser_digest: str, now: float, ttl: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_web_logins WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_web_logins VALUES (?, ?, ?)",
                (digest(subject_id), browser_digest, now + ttl),
            )

    def take_web_login(self, subject_digest: str) -> tuple[str, float] | None:
        """(browser digest, expiry) of the key-page login whose Feishu login came back."""
        with self._tx() as db:
            row = db.execute(
                "DELETE FROM auth_web_logins WHERE digest = ? "
                "RETURNING browser_digest, expires_at",
                (subject_digest,),
            ).fetchone()
        return (str(row[0]), float(row[1])) if row is not None else None

    def put_web_session(self, secret: str, user_id: str, now: float, ttl: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_web_sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO auth_web_sessions VALUES (?, ?, ?)",
                (digest(secret), user_id, now + ttl),
            )

    def web_session_user(self, secret: str, now: float) -> str | None:
        rows = self._query(
            "SELECT user_id FROM auth_web_sessions WHERE digest = ? AND expires_at > ?",
            (digest(secret), now),
        )
        return str(rows[0]["user_id"]) if rows else None

    def end_web_session(self, secret: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_web_sessions WHERE digest = ?", (digest(secret),))

    # -- MCP sessions a credential bound ---------------------------------------------------

    def bind_session_credential(
        self, session_id: str, user_id: str, needs_credential: bool
    ) -> None:
        with self._tx() as db:
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
        rows = self._query(
            "SELECT needs_credential FROM auth_session_credentials WHERE session_digest = ?",
            (digest(session_id),),
        )
        return bool(rows and rows[0]["needs_credential"])


def _insert_pair(
    db: sqlite3.Connection, grant_id: str, now: float, access_ttl: float, refresh_ttl: float
) -> tuple[str, str]:
    access, refresh = mint(ACCESS_PREFIX), mint(REFRESH_PREFIX)
    db.executemany(
        "INSERT INTO auth_tokens (digest, kind, grant_id, expires_at) VALUES (?, ?, ?, ?)",
        [
            (digest(access), ACCESS, grant_id, now + access_ttl),
            (digest(refresh), REFRESH, grant_id, now + refresh_ttl),
        ],
    )
    return access, refresh


def _delete_grant(db: sqlite3.Connection, grant_id: str) -> None:
    db.execute("DELETE FROM auth_tokens WHERE grant_id = ?", (grant_id,))
    db.execute("DELETE FROM auth_grants WHERE grant_id = ?", (grant_id,))


def _request(row: sqlite3.Row) -> AuthorizationRequest:
    return AuthorizationRequest(
        client_id=row["client_id"],
        redirect_uri=row["redirect_uri"],
        state=row["state"],
        code_challenge=row["code_challenge"],
        resource=row["resource"],
        scope=row["scope"],
        browser_digest=row["browser_digest"],
        expires_at=float(row["expires_at"]),
    )
