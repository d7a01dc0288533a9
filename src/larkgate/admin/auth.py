"""Admin credentials: the token, the page's signed cookie and CSRF tokens.

The admin token is the setting ``LARKGATE_ADMIN_TOKEN``, or else a random one the gateway
writes to ``<data_dir>/admin.token`` (mode 0600) on its first start, which the CLI on the same
machine reads. Every comparison is constant-time. The page's cookie is not the token: it is an
expiry and a nonce signed with a key derived from the token, so changing the token logs every
browser out. Forms carry a CSRF token derived from the cookie; the cookie is SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from pathlib import Path

from ..config import ENV_PREFIX, Settings

TOKEN_FILE = "admin.token"  # noqa: S105 (a file name)
COOKIE_NAME = "larkgate_admin"
COOKIE_TTL = 12 * 3600
FAILED_LOGINS_PER_MINUTE = 10


class NoAdminToken(Exception):
    """No admin token is set and the gateway has not written one yet."""


def token_file(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def admin_token(settings: Settings, *, create: bool) -> str:
    """The admin token: the setting, else the token file (made on first use if ``create``)."""
    configured = settings.admin_token.get_secret_value()
    if configured:
        return configured
    path = token_file(settings)
    if path.exists():
        return path.read_text().strip()
    if not create:
        raise NoAdminToken(
            f"no admin token: set {ENV_PREFIX}ADMIN_TOKEN, or start the gateway once so that "
            f"it writes {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class AdminAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._key = hashlib.sha256(b"larkgate-admin-cookie\0" + self._token).digest()
        self._failures: deque[float] = deque()

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def bearer_matches(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        return self.token_matches(header[7:].strip())

    def too_many_failures(self) -> bool:
        now = time.monotonic()
        while self._failures and now - self._failures[0] > 60:
            self._failures.popleft()
        return len(self._failures) >= FAILED_LOGINS_PER_MINUTE

    def note_failure(self) -> None:
        self._failures.append(time.monotonic())

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def new_cookie(self) -> str:
        body = f"{int(time.time()) + COOKIE_TTL}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def cookie_valid(self, value: str | None) -> bool:
        if not value or value.count(".") != 2:
            return False
        body, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return False
        expires = body.partition(".")[0]
        return expires.isdigit() and int(expires) > time.time()

    def csrf_for(self, cookie: str) -> str:
        return self._mac("csrf\0" + cookie)

    def csrf_valid(self, cookie: str | None, given: str | None) -> bool:
        if not cookie or not given:
            return False
        return hmac.compare_digest(given, self.csrf_for(cookie))
