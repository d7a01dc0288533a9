"""AES-256-GCM sealing: the owner is bound in, a key id names the key, damage is refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from larkgate.clock import Clock
from larkgate.config import load_settings
from larkgate.crypto import KID_BYTES, NONCE_BYTES, Sealer, SealError, key_id, new_key
from larkgate.feishu.keeper import NeedsLogin, TokenKeeper
from larkgate.feishu.oauth import FeishuOAuth
from larkgate.store import Store, Tokens

KEY = new_key()


def test_a_record_opens_for_its_owner_only() -> None:
    sealer = Sealer.from_keys(KEY)
    record = sealer.seal(b"u-secret", "ou_alice")

    assert sealer.open_sealed(record, "ou_alice") == b"u-secret"
    with pytest.raises(SealError, match="for this owner"):
        sealer.open_sealed(record, "ou_bob")


def test_each_seal_names_its_key_and_uses_a_fresh_nonce() -> None:
    sealer = Sealer.from_keys(KEY)
    first, second = sealer.seal(b"same", "o"), sealer.seal(b"same", "o")

    assert Sealer.record_kid(first) == key_id(KEY) == sealer.primary_kid
    assert len(first[:KID_BYTES]) == KID_BYTES
    assert (
        first[KID_BYTES : KID_BYTES + NONCE_BYTES] != second[KID_BYTES : KID_BYTES + NONCE_BYTES]
    )
    assert b"same" not in first


def test_a_damaged_record_is_refused() -> None:
    sealer = Sealer.from_keys(KEY)
    record = bytearray(sealer.seal(b"u-secret", "o"))
    record[-1] ^= 1

    with pytest.raises(SealError):
        sealer.open_sealed(bytes(record), "o")


def test_a_record_of_an_unknown_key_names_the_key_id() -> None:
    other = new_key()
    record = Sealer.from_keys(other).seal(b"x", "o")

    with pytest.raises(SealError, match=key_id(other)):
        Sealer.from_keys(KEY).open_sealed(record, "o")


def test_old_keys_open_and_the_primary_seals() -> None:
    old = new_key()
    record = Sealer.from_keys(old).seal(b"x", "o")
    rotated = Sealer.from_keys(KEY, old)

    assert rotated.open_sealed(record, "o") == b"x"
    assert Sealer.record_kid(rotated.seal(b"x", "o")) == key_id(KEY)


@pytest.mark.anyio
async def test_a_token_record_copied_to_another_user_does_not_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "larkgate.db", Sealer.from_keys(KEY))
    clock = Clock()
    far = clock.now() + 7200
    for user in ("ou_alice", "ou_bob"):
        tokens = Tokens(f"u-{user}", far, f"ur-{user}", far + 86400, obtained_at=clock.now())
        store.upsert_user(user, union_id="", tenant_key="", name=user, tokens=tokens)
    with store._database.tx() as db:
        db.execute(
            "UPDATE users SET tokens = (SELECT tokens FROM users WHERE user_id = 'ou_alice') "
            "WHERE user_id = 'ou_bob'"
        )
    settings = load_settings(data_dir=tmp_path)
    async with httpx.AsyncClient() as http:
        keeper = TokenKeeper(settings, store, FeishuOAuth(settings, http, clock), clock)

        with pytest.raises(SealError):
            store.load_tokens("ou_bob")
        with pytest.raises(NeedsLogin, match="could not be opened"):
            await keeper.access_token("ou_bob")
        assert await keeper.access_token("ou_alice") == "u-ou_alice"
    assert store.get_user("ou_bob").needs_login is None  # not Bob's fault: a login fixes it
    store.close()
