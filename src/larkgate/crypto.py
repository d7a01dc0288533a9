"""AES-256-GCM sealing of secrets at rest.

A sealed record is ``kid(8) || nonce(12) || ciphertext+tag``. The key id lets several keys
coexist during a rotation; the associated data binds a record to its owner (the user id), so
a record copied under another user fails to open instead of yielding that user's token.

Where keys come from is a `KeySource`: fixed keys for tests and the key setting, key files that
a rotation changes under a running gateway (see `larkgate.keys`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KID_BYTES = 8


class SealError(Exception):
    """A sealed record could not be opened: wrong key, wrong owner, or damaged."""


def key_id(key: bytes) -> str:
    """A short public name for a key: it says which key sealed a record, not the key."""
    return hashlib.sha256(b"larkgate-kid" + key).hexdigest()[:KID_BYTES]


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of 32 bytes") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"must be base64 of {KEY_BYTES} bytes, got {len(key)}")
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


@dataclass(frozen=True)
class KeySet:
    """The keys a sealer may open with, by key id, and the id of the one it seals with."""

    primary: str
    keys: Mapping[str, bytes] = field(repr=False)

    @classmethod
    def of(cls, primary: bytes, *others: bytes) -> KeySet:
        return cls(key_id(primary), {key_id(k): k for k in (primary, *others)})


class KeySource(Protocol):
    def current(self) -> KeySet:
        """The keys now; cheap enough to ask before every seal."""
        ...

    def reload(self) -> KeySet:
        """Read the keys again: a record names a key id this process has not seen yet."""
        ...


class StaticKeys:
    """Keys that never change while the process runs (the key setting, tests)."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    def current(self) -> KeySet:
        return self._keys

    def reload(self) -> KeySet:
        return self._keys


class Sealer:
    """Seals with the source's primary key; opens with any key the source knows."""

    def __init__(self, source: KeySource) -> None:
        self._source = source
        # A key id is derived from its key, so it names one AES-GCM object for good.
        self._aeads: dict[str, AESGCM] = {}

    @classmethod
    def from_keys(cls, primary: bytes, *others: bytes) -> Sealer:
        return cls(StaticKeys(KeySet.of(primary, *others)))

    @property
    def primary_kid(self) -> str:
        return self._source.current().primary

    def knows(self, kid: str) -> bool:
        return kid in self._source.current().keys or kid in self._source.reload().keys

    def seal(self, plaintext: bytes, owner: str) -> bytes:
        keys = self._source.current()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead(keys.primary, keys.keys[keys.primary]).encrypt(
            nonce, plaintext, owner.encode()
        )
        return keys.primary.encode() + nonce + sealed

    def open_sealed(self, record: bytes, owner: str) -> bytes:
        kid = self.record_kid(record)
        nonce = record[KID_BYTES : KID_BYTES + NONCE_BYTES]
        body = record[KID_BYTES + NONCE_BYTES :]
        aead = self._aeads.get(kid)  # known keys open without looking at the key files
        if aead is None:
            key = self._source.current().keys.get(kid)
            if key is None:
                # A rotation in another process may have added a key since this one looked.
                key = self._source.reload().keys.get(kid)
            if key is None:
                raise SealError(f"sealed with unknown key id {kid}")
            aead = self._aead(kid, key)
        try:
            return aead.decrypt(nonce, body, owner.encode())
        except InvalidTag:
            raise SealError(f"record does not open with key {kid} for this owner") from None

    def _aead(self, kid: str, key: bytes) -> AESGCM:
        aead = self._aeads.get(kid)
        if aead is None:
            aead = self._aeads[kid] = AESGCM(key)
        return aead

    @staticmethod
    def record_kid(record: bytes) -> str:
        return record[:KID_BYTES].decode(errors="replace")
