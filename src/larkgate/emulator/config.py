"""What the emulated Feishu app looks like: its credentials, its users and its limits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmulatedUser:
    """One Feishu user of the emulated tenant, with ids shaped like the real ones."""

    open_id: str
    union_id: str
    user_id: str
    tenant_key: str
    name: str
    email: str


DEFAULT_TENANT_KEY = "tenant_demo"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8790


def make_user(login: str, tenant_key: str = DEFAULT_TENANT_KEY) -> EmulatedUser:
    """Build a user whose ids are stable across runs, so tests and demos can name them."""
    # Real open_ids are "ou_" + 32 hex; keeping the login name inside makes logs readable.
    digest = hashlib.sha256(login.encode()).hexdigest()
    return EmulatedUser(
        open_id=f"ou_{login}_{digest[:16]}",
        union_id=f"on_{login}_{digest[16:32]}",
        user_id=login,
        tenant_key=tenant_key,
        name=login.capitalize(),
        email=f"{login}@example.com",
    )


def default_users() -> list[EmulatedUser]:
    return [make_user(login) for login in ("alice", "bob", "carol")]


@dataclass
class EmulatorConfig:
    """Settings of one emulator; every time is in seconds of the emulator's clock."""

    app_id: str = "cli_emulator"
    app_secret: str = "emulator-secret"  # noqa: S105 - a fixed fake secret is the point
    users: list[EmulatedUser] = field(default_factory=default_users)
    access_token_ttl: int = 7200
    refresh_token_ttl: int = 604800
    code_ttl: int = 300
    old_token_grace: int = 60
    authorization_max_age: int = 365 * 86400
    grant_offline_access: bool = True
    rate_limit_per_second: int | None = None
    rate_limit_per_minute: int | None = None
    tenant_token_ttl: int = 7200

    def find_user(self, key: str) -> EmulatedUser | None:
        """Look a user up by open_id, user_id or (case-insensitive) name."""
        for user in self.users:
            if key in (user.open_id, user.user_id) or key.lower() == user.name.lower():
                return user
        return None
