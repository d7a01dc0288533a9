"""AES-256-GCM sealing of secrets at rest.

A sealed record is ``kid(8) || nonce(12) || ciphertext+tag``. The key id lets several keys
coexist during a rotation; the associated data binds a record to its owner (the user id), so
a record copied under another user fails to open instead of yielding that user's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KID_BYTES = 8


class SealError(Exception):
    """A sealed record could not be opened: wrong key, wrong owner, or damaged."""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"larkgate-kid" + key).hexdigest()[:KID_BYTES].encode()


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of 32 bytes") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"must be base64 of {KEY_BYTES} bytes, got {len(key)}")
    return key


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, or create it with mode 0600 on first start."""
    if path.exists():
        return decode_key(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key_text() + "\n")
    return decode_key(path.read_text())


class Sealer:
    """Seals with the primary key; opens with any key it knows (old ones during rotation)."""

    def __init__(self, primary: bytes, others: tuple[bytes, ...] = ()) -> None:
        self._primary_kid = key_id(primary)
        self._keys = {key_id(k): AESGCM(k) for k in (primary, *others)}

    @property
    def primary_kid(self) -> str:
        return self._primary_kid.decode()

    def seal(self, plaintext: bytes, owner: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self._primary_kid].encrypt(nonce, plaintext, owner.encode())
        return self._primary_kid + nonce + sealed

    def open_sealed(self, record: bytes, owner: str) -> bytes:
        kid, nonce, body = (
            record[:KID_BYTES],
            record[KID_BYTES : KID_BYTES + NONCE_BYTES],
            record[KID_BYTES + NONCE_BYTES :],
        )
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(f"sealed with unknown key id {kid.decode(errors='replace')}")
        try:
            return aead.decrypt(nonce, body, owner.encode())
        except InvalidTag:
            raise SealError("record does not open with this key and owner") from None

    @staticmethod
    def record_kid(record: bytes) -> str:
        return record[:KID_BYTES].decode(errors="replace")
