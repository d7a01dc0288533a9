"""OAuth records: clients, pending authorizations, codes, grants and their tokens.

A grant is one user's consent to one client for one resource; its access and refresh tokens
are rows that point at it. Revoking a grant deletes its tokens; a replayed code or refresh
token revokes its grant. Times are the gateway clock's, passed in by the caller, so tests can
move them. Expired rows are swept when their table gains a row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import Enum

from ..store import digest
from .db import AuthDb
from .tokens import ACCESS_PREFIX, CLIENT_PREFIX, REFRESH_PREFIX, mint, short_id

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
    expires_at: float


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


class GrantStore:
    def __init__(self, db: AuthDb) -> None:
        self._db = db

    # -- clients ---------------------------------------------------------------------------

    def add_client(
        self, name: str, redirect_uris: list[str], now: float, unused_ttl: float
    ) -> Client:
        client = Client(mint(CLIENT_PREFIX), name, redirect_uris, now)
        with self._db.tx() as db:
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
        rows = self._db.query("SELECT * FROM auth_clients WHERE client_id = ?", (client_id,))
        if not rows:
            return None
        row = rows[0]
        return Client(
            row["client_id"], row["name"], json.loads(row["redirect_uris"]), row["created_at"]
        )

    # -- authorization requests (consent page, then the Feishu login) ----------------------

    def put_request(self, request_id: str, request: AuthorizationRequest, now: float) -> None:
        with self._db.tx() as db:
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
        rows = self._db.query(
            "SELECT * FROM auth_requests WHERE digest = ? AND subject_digest IS NULL",
            (digest(request_id),),
        )
        return _request(rows[0]) if rows else None

    def approve_request(self, request_id: str, subject_id: str) -> bool:
        """Hand the request to a Feishu login; a consent form is good for one approval only."""
        with self._db.tx() as db:
            cur = db.execute(
                "UPDATE auth_requests SET subject_digest = ? "
                "WHERE digest = ? AND subject_digest IS NULL",
                (digest(subject_id), digest(request_id)),
            )
            return cur.rowcount == 1

    def drop_request(self, request_id: str) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM auth_requests WHERE digest = ?", (digest(request_id),))

    def take_request(self, subject_digest: str) -> AuthorizationRequest | None:
        """Consume the request whose Feishu login just came back (expired ones included)."""
        with self._db.tx() as db:
            cur = db.execute(
                "DELETE FROM auth_requests WHERE subject_digest = ? RETURNING *", (subject_digest,)
            )
            cur.row_factory = sqlite3.Row
            row = cur.fetchone()
        return _request(row) if row is not None else None

    # -- codes, grants and tokens ----------------------------------------------------------

    def put_code(self, code: str, grant: CodeGrant, now: float) -> None:
        with self._db.tx() as db:
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
        with self._db.tx() as db:
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
        with self._db.tx() as db:
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
        with self._db.tx() as db:
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

    def access_token_owner(self, token: str) -> AccessTokenOwner | None:
        """Whose access token this is, expired or not (the caller judges the expiry)."""
        return self._db.memo(("access", token), lambda: self._access_token_owner(token))

    def _access_token_owner(self, token: str) -> AccessTokenOwner | None:
        rows = self._db.query(
            "SELECT g.user_id, g.client_id, g.resource, g.grant_id, t.expires_at "
            "FROM auth_tokens t JOIN auth_grants g ON g.grant_id = t.grant_id "
            "WHERE t.digest = ? AND t.kind = ?",
            (digest(token), ACCESS),
        )
        if not rows:
            return None
        row = rows[0]
        return AccessTokenOwner(
            row["user_id"], row["client_id"], row["resource"], row["grant_id"], row["expires_at"]
        )

    def revoke_token(self, token: str, client_id: str | None) -> tuple[str, str, str] | None:
        """Revoke one token (a refresh token takes its grant along): (kind, grant, user)."""
        with self._db.tx() as db:
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
        with self._db.tx() as db:
            owned = db.execute(
                "SELECT 1 FROM auth_grants WHERE grant_id = ? AND user_id = ?",
                (grant_id, user_id),
            ).fetchone()
            if owned is None:
                return False
            _delete_grant(db, grant_id)
            return True

    def connected_clients(self, user_id: str, now: float) -> list[ConnectedClient]:
        rows = self._db.query(
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
