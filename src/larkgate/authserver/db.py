"""The authorization server's connection to the gateway's SQLite file, and its tables.

Its own tables (``auth_*``) in the gateway's database file, through a connection of its own:
the gateway's ``Store`` stays as it is, and both move together when SQLite is replaced. Every
secret in these tables (code, token, key, cookie, request id) is a SHA-256 digest.
"""

from __future__ import annotations

from pathlib import Path

from ..database import Database

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


class AuthDb(Database):
    """The authorization server's tables, on the gateway's SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)
