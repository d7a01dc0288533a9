"""Where keys live, the key check at start, and `larkgate rotate-key` under a running gateway."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from larkgate.config import ConfigError, Settings, load_settings
from larkgate.crypto import Sealer, encode_key, key_id, new_key
from larkgate.keys import LEGACY_KEY_FILE, open_keys, open_store, rotate_key
from larkgate.store import Store, Tokens

TOKENS = Tokens("u-access", 2e9, "ur-refresh", 2e9 + 86400)
SUFFIXES = ("", "-wal", "-shm")  # the store, its write-ahead log and shared memory


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(data_dir=data_dir, **overrides)


def seed(store: Store, *users: str) -> None:
    for user in users:
        store.upsert_user(user, union_id="", tenant_key="", name=user, tokens=TOKENS)
    store.put_login_state("a-state", "a-session", "a-verifier", expires_at=2e9)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_start_creates_private_key_and_store_files_and_reuses_them(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    store = open_store(settings)
    seed(store, "ou_alice")
    sealed_files = [settings.store_path.with_name(settings.store_path.name + s) for s in SUFFIXES]
    assert {f.name: mode(f) for f in sealed_files} == {f.name: 0o600 for f in sealed_files}
    store.close()

    files = list(settings.keys_dir.glob("*.key"))
    assert len(files) == 1 and mode(files[0]) == 0o600
    assert mode(settings.keys_dir) == 0o700
    assert (settings.keys_dir / "primary").read_text().strip() == files[0].stem
    again = open_store(settings)
    assert again.load_tokens("ou_alice")[0] == TOKENS
    again.close()


def test_a_key_file_of_an_earlier_version_is_moved_in(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / LEGACY_KEY_FILE).write_text(encode_key(key) + "\n")
    old_store = Store(tmp_path / "larkgate.db", Sealer.from_keys(key))
    seed(old_store, "ou_alice")
    old_store.close()

    store = open_store(settings_for(tmp_path))

    assert store.load_tokens("ou_alice")[0] == TOKENS
    assert not (tmp_path / LEGACY_KEY_FILE).exists()
    assert (tmp_path / "keys" / f"{key_id(key)}.key").exists()
    store.close()


def test_a_wrong_key_setting_is_refused_at_start_naming_the_setting(tmp_path: Path) -> None:
    first = encode_key(new_key())
    store = open_store(settings_for(tmp_path, encryption_key=first))
    seed(store, "ou_alice")
    store.close()

    with pytest.raises(ConfigError, match="wrong key") as raised:
        open_store(settings_for(tmp_path, encryption_key=encode_key(new_key())))

    assert "LARKGATE_ENCRYPTION_KEY" in str(raised.value)
    assert first not in str(raised.value)


def test_a_missing_key_file_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = open_store(settings)
    seed(store, "ou_alice")
    store.close()
    kid = (settings.keys_dir / "primary").read_text().strip()
    (settings.keys_dir / f"{kid}.key").unlink()

    with pytest.raises(ConfigError, match=kid):
        open_store(settings)


def test_a_malformed_key_setting_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LARKGATE_ENCRYPTION_KEY is invalid"):
        open_store(settings_for(tmp_path, encryption_key="not base64 at all"))


def test_a_key_file_that_does_not_match_its_name_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    open_store(settings).close()
    kid = (settings.keys_dir / "primary").read_text().strip()
    (settings.keys_dir / f"{kid}.key").write_text(encode_key(new_key()))

    with pytest.raises(ConfigError, match="holds key"):
        open_store(settings)


def test_rotation_reseals_everything_and_a_running_gateway_follows(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    running = open_store(settings)  # the gateway, started before the rotation
    seed(running, "ou_alice", "ou_bob")
    old_kid = running.kids_in_use().pop()
    in_flight_version = running.load_tokens("ou_bob")[1]

    rotation = rotate_key(settings)

    assert rotation.primary != old_kid and rotation.resealed == 4  # 2 users, state, canary
    assert rotation.still_old == set()
    assert running.kids_in_use() == {rotation.primary}
    # The running gateway opens what the rotation sealed, and seals new writes with the new key.
    assert running.load_tokens("ou_alice")[0] == TOKENS
    running.upsert_user("ou_carol", union_id="", tenant_key="", name="c", tokens=TOKENS)
    assert running.kids_in_use() == {rotation.primary}
    # A refresh that was in flight during the rotation can still store its answer.
    assert running.replace_tokens("ou_bob", TOKENS, in_flight_version)
    assert running.take_login_state("a-state") is not None
    running.close()
    assert (settings.keys_dir / f"{old_kid}.key").exists()  # kept until retired

    again = rotate_key(settings, retire=True)

    assert sorted(again.retired) == sorted([old_kid, rotation.primary])
    assert [p.stem for p in settings.keys_dir.glob("*.key")] == [again.primary]
    restarted = open_store(settings)
    assert restarted.load_tokens("ou_carol")[0] == TOKENS
    restarted.close()


def test_rotation_with_the_key_setting_uses_the_previous_keys_to_open(tmp_path: Path) -> None:
    old, new = encode_key(new_key()), encode_key(new_key())
    store = open_store(settings_for(tmp_path, encryption_key=old))
    seed(store, "ou_alice")
    store.close()
    with pytest.raises(ConfigError):
        open_store(settings_for(tmp_path, encryption_key=new))

    rotation = rotate_key(
        settings_for(tmp_path, encryption_key=new, previous_encryption_keys=[old])
    )

    assert rotation.still_old == set()
    store = open_store(settings_for(tmp_path, encryption_key=new))
    assert store.load_tokens("ou_alice")[0] == TOKENS
    store.close()


def test_rotate_key_command_line(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = open_store(settings)
    seed(store, "ou_alice")
    store.close()
    env = {"PATH": os.environ["PATH"], "LARKGATE_DATA_DIR": str(tmp_path)}

    done = subprocess.run(
        [sys.executable, "-m", "larkgate.cli", "rotate-key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    primary = (settings.keys_dir / "primary").read_text().strip()
    assert f"primary key: {primary}" in done.stdout
    assert "records re-sealed: 3" in done.stdout
    store = open_store(settings)
    assert store.kids_in_use() == {primary}
    store.close()


def test_a_bad_edit_of_the_key_directory_does_not_break_a_running_gateway(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    keys = open_keys(settings)
    before = keys.current()
    (settings.keys_dir / "garbage.key").write_text("nonsense")

    # A running gateway keeps its keys rather than break on a bad edit of the directory.
    assert keys.reload() == before
