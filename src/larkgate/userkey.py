"""The name a user goes by wherever the raw Feishu id must not appear."""

from __future__ import annotations

import hashlib


def user_key(user_id: str) -> str:
    """A stable, path-safe, non-reversible name for a user (logs, directories, metrics)."""
    return hashlib.sha256(b"larkgate-user:" + user_id.encode()).hexdigest()[:16]
