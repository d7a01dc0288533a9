"""The embedded store: users, sealed tokens, MCP sessions, logins under way, child processes.

SQLite in WAL mode with ``synchronous=FULL``: every write is one transaction, so a crash
leaves either the old or the new record. Session ids, login-link handles and login states are
bearer secrets and are kept only as SHA-256 digests. Calls are short and synchronous; the
gateway makes a few per request, far below what the hop to a child costs.

This class is the seam where a shared database replaces SQLite when LarkGate runs on several
machines: callers see only the methods below.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .crypto import Sealer, SealError
from .database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    union_id TEXT NOT NULL DEFAULT '',
    tenant_key TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    tokens BLOB,
    token_version INTEGER NOT NULL DEFAULT 0,
    refresh_expires_at REAL,
    needs_login TEXT,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    user_id TEXT REFERENCES users(user_id) ON DELETE SET NULL,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    client_name TEXT,
    client_version TEXT,
    login_digest TEXT
);
CREATE TABLE IF NOT EXISTS login_states (
    digest TEXT PRIMARY KEY,
    session_digest TEXT NOT NULL,
    verifier BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS login_confirmations (
    digest TEXT PRIMARY KEY,
    session_digest TEXT NOT NULL,
    browser_digest TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS children (
    pid INTEGER PRIMARY KEY,
    port INTEGER NOT NULL,
    user_id TEXT,
    started_at REAL NOT NULL
);
"""

CANARY_KEY = "key_canary"
CANARY_OWNER = "larkgate:canary"

# Columns added after a store was first created: (table, column, declaration).
_ADDED_COLUMNS = (
    ("users", "refresh_expires_at", "REAL"),
    ("sessions", "client_name", "TEXT"),
    ("sessions", "client_version", "TEXT"),
    ("sessions", "login_digest", "TEXT"),
)
# Indexes on added columns, made once the columns exist.
_ADDED_INDEXES = ("CREATE UNIQUE INDEX IF NOT EXISTS sessions_by_login ON sessions(login_digest)",)


@dataclass(frozen=True)
class _SealedColumn:
    """A column of sealed blobs, with how to find a row and whose record it is."""

    table: str
    key: str
    blob: str
    owner: Callable[[str], str]
    where: str = "1"


# Every sealed value in the store; a key rotation walks exactly these.
_SEALED_COLUMNS = (
    _SealedColumn("users", "user_id", "tokens", lambda user_id: user_id),
    _SealedColumn("login_states", "digest", "verifier", lambda state_digest: state_digest),
    _SealedColumn("meta", "key", "value", lambda _key: CANARY_OWNER, f"key = '{CANARY_KEY}'"),
)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Tokens:
    """A user's Feishu tokens; times are local epoch seconds when each one stops working.

    An empty ``refresh_token`` means Feishu gave none (no offline access): the access token
    is all there is until it expires. ``obtained_at`` is when the access token was asked for.
    """

    access_token: str
    access_expires_at: float
    refresh_token: str = ""
    refresh_expires_at: float = 0.0
    scope: str = ""
    authorized_at: float = 0.0
    obtained_at: float = 0.0

    @property
    def refreshable(self) -> bool:
        return bool(self.refresh_token)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Tokens:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


@dataclass(frozen=True)
class TokenRecord:
    """What the store holds for one user's login; ``tokens`` is None once logged out."""

    tokens: Tokens | None
    version: int
    needs_login: str | None


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    union_id: str
    tenant_key: str
    name: str
    token_version: int
    needs_login: str | None
    created_at: float
    last_seen_at: float
    has_tokens: bool


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored; the client's name and version are what it said in ``initialize``.

    ``login_digest`` is the digest of its login link's handle, once a link was shown.
    """

    digest: str
    transport: str
    user_id: str | None
    created_at: float
    last_seen_at: float
    client_name: str | None = None
    client_version: str | None = None
    login_digest: str | None = None


class SessionLogin(Enum):
    """What a finished login did to the session it was for."""

    BOUND = "bound"  # the session now acts as the user (it was unbound, or already theirs)
    NO_SESSION = "no_session"  # the session ended meanwhile, or the login was not for one
    OTHER_USER = "other_user"  # another user's session: refused, nothing was stored


@dataclass(frozen=True)
class LoginConfirmation:
    """A shown login-link page whose button was not pressed yet (digests only)."""

    session_digest: str
    browser_digest: str
    scopes: tuple[str, ...]
    expires_at: float


class Store:
    def __init__(self, path: Path, sealer: Sealer) -> None:
        self.path = path
        self._sealer = sealer
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
        self._database = Database(path, SCHEMA, foreign_keys=True)
        self._add_new_columns()

    def _add_new_columns(self) -> None:
        with self._database.tx() as db:
            for table, column, declaration in _ADDED_COLUMNS:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            for index in _ADDED_INDEXES:
                db.execute(index)

    def close(self) -> None:
        self._database.close()

    # -- keys ------------------------------------------------------------------------------

    def key_problem(self) -> str | None:
        """Why the sealer cannot open this store, in words naming the key ids; None if it can.

        Run at start, so a wrong key is a clear refusal then instead of failed logins later.
        """
        rows = self._database.query("SELECT value FROM meta WHERE key = ?", (CANARY_KEY,))
        if not rows:
            with self._database.tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                    (CANARY_KEY, self._sealer.seal(b"ok", CANARY_OWNER)),
                )
        unknown = sorted(kid for kid in self.kids_in_use() if not self._sealer.knows(kid))
        if unknown:
            return (
                f"the store {self.path} holds records sealed with key id {', '.join(unknown)}, "
                "which no configured key has"
            )
        canary = self._database.query("SELECT value FROM meta WHERE key = ?", (CANARY_KEY,))[0][
            "value"
        ]
        try:
            self._sealer.open_sealed(canary, CANARY_OWNER)
        except SealError as exc:
            return f"the store {self.path} does not open: {exc}"
        return None

    def kids_in_use(self) -> set[str]:
        """The key ids that sealed at least one record."""
        kids: set[str] = set()
        for column in _SEALED_COLUMNS:
            rows = self._database.query(
                f"SELECT DISTINCT substr({column.blob}, 1, 8) AS kid FROM {column.table} "  # noqa: S608 - names come from _SEALED_COLUMNS
                f"WHERE {column.blob} IS NOT NULL AND {column.where}"
            )
            kids.update(bytes(r["kid"]).decode(errors="replace") for r in rows)
        return kids

    def reseal(self) -> int:
        """Seal every record again under the primary key; returns how many changed.

        Each record is swapped only if it is still the blob that was read, so a token the
        gateway writes meanwhile is never overwritten. Token versions do not change: a
        refresh in flight must still be able to store its answer.
        """
        primary = self._sealer.primary_kid
        changed = 0
        for column in _SEALED_COLUMNS:
            rows = self._database.query(
                f"SELECT {column.key} AS k, {column.blob} AS b FROM {column.table} "  # noqa: S608 - names come from _SEALED_COLUMNS
                f"WHERE {column.blob} IS NOT NULL AND {column.where}"
            )
            for row in rows:
                old = bytes(row["b"])
                if Sealer.record_kid(old) == primary:
                    continue
                owner = column.owner(row["k"])
                new = self._sealer.seal(self._sealer.open_sealed(old, owner), owner)
                with self._database.tx() as db:
                    cur = db.execute(
                        f"UPDATE {column.table} SET {column.blob} = ? "  # noqa: S608 - names come from _SEALED_COLUMNS
                        f"WHERE {column.key} = ? AND {column.blob} = ?",
                        (new, row["k"], old),
                    )
                    changed += cur.rowcount
        return changed

    # -- users and tokens ------------------------------------------------------------------

    def upsert_user(
        self, user_id: str, *, union_id: str, tenant_key: str, name: str, tokens: Tokens
    ) -> None:
        sealed = self._sealer.seal(tokens.to_json(), user_id)
        with self._database.tx() as db:
            _write_user(
                db,
                user_id,
                union_id=union_id,
                tenant_key=tenant_key,
                name=name,
                sealed=sealed,
                tokens=tokens,
            )

    def log_in(
        self,
        subject_digest: str,
        user_id: str,
        *,
        union_id: str,
        tenant_key: str,
        name: str,
        tokens: Tokens,
    ) -> SessionLogin:
        """Store a finished login and bind the session it was for, in one transaction.

        A session already bound to another user stays theirs and nothing is written
        (``OTHER_USER``): a used login link must not hand a live session to someone else.
        The same user may log in on it again, as they must when Feishu refused their login.
        """
        sealed = self._sealer.seal(tokens.to_json(), user_id)
        with self._database.tx() as db:
            row = db.execute(
                "SELECT user_id FROM sessions WHERE digest = ?", (subject_digest,)
            ).fetchone()
            if row is not None and row[0] is not None and row[0] != user_id:
                return SessionLogin.OTHER_USER
            _write_user(
                db,
                user_id,
                union_id=union_id,
                tenant_key=tenant_key,
                name=name,
                sealed=sealed,
                tokens=tokens,
            )
            if row is None:
                return SessionLogin.NO_SESSION
            db.execute(
                "UPDATE sessions SET user_id = ?, last_seen_at = MAX(last_seen_at, ?) "
                "WHERE digest = ?",
                (user_id, time.time(), subject_digest),
            )
            return SessionLogin.BOUND

    def token_record(self, user_id: str) -> TokenRecord | None:
        """The user's login as stored; raises SealError if the sealed record does not open."""
        return self._database.memo(("tokens", user_id), lambda: self._token_record(user_id))

    def _token_record(self, user_id: str) -> TokenRecord | None:
        rows = self._database.query(
            "SELECT tokens, token_version, needs_login FROM users WHERE user_id = ?", (user_id,)
        )
        if not rows:
            return None
        row = rows[0]
        tokens = None
        if row["tokens"] is not None:
            tokens = Tokens.from_json(self._sealer.open_sealed(row["tokens"], user_id))
        return TokenRecord(tokens, int(row["token_version"]), row["needs_login"])

    def load_tokens(self, user_id: str) -> tuple[Tokens, int] | None:
        record = self.token_record(user_id)
        if record is None or record.tokens is None:
            return None
        return record.tokens, record.version

    def replace_tokens(self, user_id: str, tokens: Tokens, expected_version: int) -> bool:
        """Compare-and-swap: store new tokens only if nobody else replaced them since.

        One transaction, committed with a full sync before this returns: once it says True,
        the new refresh token survives a crash, and the old one is gone from the store.
        """
        sealed = self._sealer.seal(tokens.to_json(), user_id)
        with self._database.tx() as db:
            cur = db.execute(
                """UPDATE users SET tokens = ?, token_version = token_version + 1,
                       refresh_expires_at = ?, needs_login = NULL
                   WHERE user_id = ? AND token_version = ?""",
                (sealed, _renewal_deadline(tokens), user_id, expected_version),
            )
            return cur.rowcount == 1

    def note_renewal_deadline(self, user_id: str, tokens: Tokens) -> None:
        """Record when the user's refresh token expires, for a record stored before we kept it."""
        with self._database.tx() as db:
            db.execute(
                "UPDATE users SET refresh_expires_at = ? WHERE user_id = ?",
                (_renewal_deadline(tokens), user_id),
            )

    def users_to_renew(self, horizon: float) -> list[tuple[str, float | None]]:
        """Users whose refresh token expires before ``horizon`` (soonest first), or unknown.

        Returns (user_id, refresh expiry or None when the store does not know it yet).
        """
        rows = self._database.query(
            """SELECT user_id, refresh_expires_at FROM users
               WHERE tokens IS NOT NULL AND needs_login IS NULL
                 AND (refresh_expires_at IS NULL
                      OR (refresh_expires_at > 0 AND refresh_expires_at <= ?))
               ORDER BY refresh_expires_at IS NOT NULL, refresh_expires_at""",
            (horizon,),
        )
        return [(r["user_id"], r["refresh_expires_at"]) for r in rows]

    def mark_needs_login(self, user_id: str, reason: str) -> None:
        with self._database.tx() as db:
            db.execute("UPDATE users SET needs_login = ? WHERE user_id = ?", (reason, user_id))

    def logout_user(self, user_id: str, reason: str) -> None:
        with self._database.tx() as db:
            db.execute(
                """UPDATE users SET tokens = NULL, token_version = token_version + 1,
                       needs_login = ? WHERE user_id = ?""",
                (reason, user_id),
            )
            db.execute("UPDATE sessions SET user_id = NULL WHERE user_id = ?", (user_id,))

    def get_user(self, user_id: str) -> UserRecord | None:
        return self._database.memo(("user", user_id), lambda: self._get_user(user_id))

    def _get_user(self, user_id: str) -> UserRecord | None:
        rows = self._database.query(
            """SELECT user_id, union_id, tenant_key, name, token_version, needs_login,
                      created_at, last_seen_at, tokens IS NOT NULL AS has_tokens
               FROM users WHERE user_id = ?""",
            (user_id,),
        )
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[UserRecord]:
        rows = self._database.query(
            """SELECT user_id, union_id, tenant_key, name, token_version, needs_login,
                      created_at, last_seen_at, tokens IS NOT NULL AS has_tokens
               FROM users ORDER BY last_seen_at DESC"""
        )
        return [_user(r) for r in rows]

    def raw_user_row(self, user_id: str) -> tuple[Any, ...] | None:
        """The stored row as bytes and values, for checks that a record did not change."""
        rows = self._database.query("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return tuple(rows[0]) if rows else None

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, session_id: str, transport: str, user_id: str | None) -> None:
        now = time.time()
        with self._database.tx() as db:
            db.execute(
                "INSERT INTO sessions (digest, transport, user_id, created_at, last_seen_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (digest(session_id), transport, user_id, now, now),
            )

    def note_session_client(self, session_id: str, name: str, version: str) -> None:
        """Remember the client that initialized a session, for its login link's page."""
        with self._database.tx() as db:
            db.execute(
                "UPDATE sessions SET client_name = ?, client_version = ? WHERE digest = ?",
                (name, version, digest(session_id)),
            )

    def get_session(self, session_id: str) -> SessionRecord | None:
        return self._database.memo(("session", session_id), lambda: self._get_session(session_id))

    def _get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._database.query(
            "SELECT * FROM sessions WHERE digest = ?", (digest(session_id),)
        )
        return _session(rows[0]) if rows else None

    def note_login_handle(self, session_id: str, handle: str) -> None:
        """Remember the handle of a session's login link (as a digest), once it is shown."""
        handle_digest = digest(handle)
        record = self.get_session(session_id)
        if record is None or record.login_digest == handle_digest:
            return
        with self._database.tx() as db:
            db.execute(
                "UPDATE sessions SET login_digest = ? WHERE digest = ?",
                (handle_digest, digest(session_id)),
            )

    def session_by_login(self, handle: str) -> SessionRecord | None:
        """The session whose login link carries ``handle``."""
        rows = self._database.query(
            "SELECT * FROM sessions WHERE login_digest = ?", (digest(handle),)
        )
        return _session(rows[0]) if rows else None

    def bind_session(self, session_digest: str, user_id: str) -> bool:
        """Bind an unbound session to a user; False when it is gone or another user's."""
        with self._database.tx() as db:
            cur = db.execute(
                "UPDATE sessions SET user_id = ?, last_seen_at = MAX(last_seen_at, ?) "
                "WHERE digest = ? AND (user_id IS NULL OR user_id = ?)",
                (user_id, time.time(), session_digest, user_id),
            )
            return cur.rowcount == 1

    def record_last_use(self, sessions: dict[str, float], users: dict[str, float]) -> None:
        """Store when sessions (by id) and users were last used; a time never moves back."""
        with self._database.tx() as db:
            db.executemany(
                "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?) WHERE digest = ?",
                [(when, digest(session_id)) for session_id, when in sessions.items()],
            )
            db.executemany(
                "UPDATE users SET last_seen_at = MAX(last_seen_at, ?) WHERE user_id = ?",
                [(when, user_id) for user_id, when in users.items()],
            )

    def end_session(self, session_id: str) -> bool:
        return self.end_session_digest(digest(session_id))

    def end_session_digest(self, session_digest: str) -> bool:
        with self._database.tx() as db:
            cur = db.execute("DELETE FROM sessions WHERE digest = ?", (session_digest,))
            return cur.rowcount == 1

    def end_idle_sessions(self, older_than: float) -> int:
        with self._database.tx() as db:
            cur = db.execute("DELETE FROM sessions WHERE last_seen_at < ?", (older_than,))
            return cur.rowcount

    def list_sessions(self) -> list[SessionRecord]:
        rows = self._database.query("SELECT * FROM sessions ORDER BY last_seen_at DESC")
        return [_session(r) for r in rows]

    # -- login states ----------------------------------------------------------------------

    def put_login_state(
        self,
        state: str,
        subject_digest: str,
        verifier: str,
        expires_at: float,
        now: float | None = None,
    ) -> None:
        """A login under way for a subject (a session or another flow), known by its digest."""
        state_digest = digest(state)
        sealed = self._sealer.seal(verifier.encode(), state_digest)
        with self._database.tx() as db:
            db.execute(
                "DELETE FROM login_states WHERE expires_at < ?",
                (time.time() if now is None else now,),
            )
            db.execute(
                "INSERT INTO login_states VALUES (?, ?, ?, ?)",
                (state_digest, subject_digest, sealed, expires_at),
            )

    def take_login_state(self, state: str, now: float | None = None) -> tuple[str, str] | None:
        """Consume a login state once: (session digest, PKCE verifier), or None.

        The state is deleted by any attempt that names it, so even a refused (expired) one
        cannot be tried again.
        """
        state_digest = digest(state)
        with self._database.tx() as db:
            cur = db.execute(
                "DELETE FROM login_states WHERE digest = ? RETURNING session_digest, verifier, "
                "expires_at",
                (state_digest,),
            )
            row = cur.fetchone()
        if row is None or row[2] <= (time.time() if now is None else now):
            return None
        verifier = self._sealer.open_sealed(row[1], state_digest).decode()
        return str(row[0]), verifier

    # -- login-link confirmations --------------------------------------------------------

    def put_login_confirmation(
        self,
        token: str,
        session_digest: str,
        *,
        browser_id: str,
        scopes: tuple[str, ...],
        expires_at: float,
        now: float,
    ) -> None:
        """Remember a login-link page's token: one press of its button, in that browser."""
        with self._database.tx() as db:
            db.execute("DELETE FROM login_confirmations WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO login_confirmations VALUES (?, ?, ?, ?, ?)",
                (
                    digest(token),
                    session_digest,
                    digest(browser_id),
                    " ".join(scopes),
                    expires_at,
                ),
            )

    def get_login_confirmation(self, token: str) -> LoginConfirmation | None:
        """The confirmation a page's token names, without using it up."""
        rows = self._database.query(
            "SELECT * FROM login_confirmations WHERE digest = ?", (digest(token),)
        )
        if not rows:
            return None
        row = rows[0]
        return LoginConfirmation(
            session_digest=row["session_digest"],
            browser_digest=row["browser_digest"],
            scopes=tuple(row["scopes"].split()),
            expires_at=float(row["expires_at"]),
        )

    def take_login_confirmation(self, token: str) -> bool:
        """Use a confirmation up; False when another request already did."""
        with self._database.tx() as db:
            cur = db.execute("DELETE FROM login_confirmations WHERE digest = ?", (digest(token),))
            return cur.rowcount == 1

    # -- child processes (so a restarted gateway can stop the ones a killed run left) ------

    def record_child(self, pid: int, port: int, user_id: str | None) -> None:
        with self._database.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO children VALUES (?, ?, ?, ?)",
                (pid, port, user_id, time.time()),
            )

    def forget_child(self, pid: int) -> None:
        with self._database.tx() as db:
            db.execute("DELETE FROM children WHERE pid = ?", (pid,))

    def list_children(self) -> list[tuple[int, int, str | None]]:
        rows = self._database.query("SELECT pid, port, user_id FROM children")
        return [(int(r["pid"]), int(r["port"]), r["user_id"]) for r in rows]


def _make_private(path: Path) -> None:
    """The database and its -wal and -shm files hold sealed tokens: mode 0600 from the start.

    SQLite creates the -wal and -shm files with the database file's mode, so creating that file
    private first keeps all three private whatever the umask.
    """
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if file.exists():
            file.chmod(0o600)


def _write_user(
    db: sqlite3.Connection,
    user_id: str,
    *,
    union_id: str,
    tenant_key: str,
    name: str,
    sealed: bytes,
    tokens: Tokens,
) -> None:
    """A user's login as Feishu just gave it: profile, sealed tokens, logged in now."""
    now = time.time()
    db.execute(
        """INSERT INTO users (user_id, union_id, tenant_key, name, tokens, token_version,
               refresh_expires_at, needs_login, created_at, last_seen_at)
           VALUES (?, ?, ?, ?, ?, 1, ?, NULL, ?, ?)
           ON CONFLICT(user_id) DO UPDATE SET union_id=excluded.union_id,
               tenant_key=excluded.tenant_key, name=excluded.name, tokens=excluded.tokens,
               token_version=users.token_version + 1,
               refresh_expires_at=excluded.refresh_expires_at, needs_login=NULL,
               last_seen_at=excluded.last_seen_at""",
        (user_id, union_id, tenant_key, name, sealed, _renewal_deadline(tokens), now, now),
    )


def _renewal_deadline(tokens: Tokens) -> float:
    """When the background renewal must act by; 0 means never (there is no refresh token)."""
    return tokens.refresh_expires_at if tokens.refreshable else 0.0


def _user(row: sqlite3.Row) -> UserRecord:
    return UserRecord(
        user_id=row["user_id"],
        union_id=row["union_id"],
        tenant_key=row["tenant_key"],
        name=row["name"],
        token_version=int(row["token_version"]),
        needs_login=row["needs_login"],
        created_at=float(row["created_at"]),
        last_seen_at=float(row["last_seen_at"]),
        has_tokens=bool(row["has_tokens"]),
    )


def _session(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        digest=row["digest"],
        transport=row["transport"],
        user_id=row["user_id"],
        created_at=float(row["created_at"]),
        last_seen_at=float(row["last_seen_at"]),
        client_name=row["client_name"],
        client_version=row["client_version"],
        login_digest=row["login_digest"],
    )
