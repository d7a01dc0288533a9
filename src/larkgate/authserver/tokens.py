"""LarkGate's own secrets: how they are minted, compared and checked against a PKCE challenge.

Every secret is 256 random bits behind a short prefix that says what it is, so a leaked one is
recognisable (and a bearer can be routed to the right table without a lookup in each). Only
SHA-256 digests of them are stored; a digest lookup reveals nothing useful through its timing,
and every comparison of two secret values goes through ``same``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

ACCESS_PREFIX = "lga_"
REFRESH_PREFIX = "lgr_"
KEY_PREFIX = "lgk_"
CLIENT_PREFIX = "lgc_"

_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def mint(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def short_id() -> str:
    """A public, non-secret id for a grant or a key, shown in pages and audit lines."""
    return secrets.token_hex(6)


def new_access_key() -> tuple[str, str]:
    """(key id, key): the id is public and listed; the key is shown once."""
    key_id = short_id()
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def same(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode(), right.encode())


def valid_challenge(challenge: str) -> bool:
    """An S256 challenge is the unpadded base64url of 32 bytes: exactly 43 characters."""
    return _CHALLENGE.fullmatch(challenge) is not None


def s256(verifier: str) -> str:
    raw = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verifier_matches(verifier: str, challenge: str) -> bool:
    if _VERIFIER.fullmatch(verifier) is None:
        return False
    return same(s256(verifier), challenge)
