"""What a login link carries in place of the MCP session id, and the secret that makes it.

The session id is the session's credential: it is the ``Mcp-Session-Id`` of ``/mcp`` and the
``sessionId`` of ``/messages``. A login link travels much further than that id (browser
history, the chat it was pasted into, a proxy's log), so it carries a *login handle* instead:
an HMAC of the session id under a secret of this gateway. The handle names the session to the
login pages only; it cannot be sent as the session id, and nothing turns it back into one.

The secret lives in ``<data_dir>/login-link.secret`` (mode 0600), made on the first start, so a
link shown before a restart works after it. The store keeps only the handle's digest, next to
the session it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

from .config import ConfigError, Settings
from .crypto import decode_key, encode_key, new_key

SECRET_FILE = "login-link.secret"  # noqa: S105 (a file name)
# The query parameter of /oauth/start and the field of its page's form.
HANDLE_PARAM = "login"
_PURPOSE = b"larkgate login link\0"


class LoginLinks:
    """Makes the login link of a session: ``<public_url>/oauth/start?login=<handle>``."""

    def __init__(self, settings: Settings) -> None:
        self._public_url = settings.public_url
        self._secret = load_secret(secret_path(settings))

    def handle(self, session_id: str) -> str:
        mac = hmac.new(self._secret, _PURPOSE + session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, handle: str, scopes: Sequence[str] = ()) -> str:
        query = {HANDLE_PARAM: handle} | ({"scope": " ".join(scopes)} if scopes else {})
        return f"{self._public_url}/oauth/start?{urlencode(query)}"


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE


def load_secret(path: Path) -> bytes:
    """The secret in ``path``, written there first (0600) if there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        try:
            return _create_secret(path)
        except FileExistsError:  # made meanwhile by another process on the same directory
            text = path.read_text()
    try:
        return decode_key(text)
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a login-link secret ({exc}); remove it and a new one is made on the "
            "next start (login links shown before then stop working)"
        ) from None


def _create_secret(path: Path) -> bytes:
    secret = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_key(secret) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret
