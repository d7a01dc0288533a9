"""Where keys live, the key check at start, and `larkgate rotate-key` under a running gateway."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from larkgate.backup import BackupError, open_snapshot, state_sealer, write_backup
from larkgate.config import ConfigError, Settings, load_settings
from larkgate.crypto import Sealer, decode_key, encode_key, key_id, new_key
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

    assert again.primary == rotation.primary and again.retired == [old_kid]
    assert [p.stem for p in settings.keys_dir.glob("*.key")] == [rotation.primary]
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


def test_retire_makes_no_new_key_reseals_stragglers_and_removes_only_unused_keys(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    store = open_store(settings)
    seed(store, "ou_alice")
    old_kid = store.kids_in_use().pop()
    store.close()
    old_key = decode_key((settings.keys_dir / f"{old_kid}.key").read_text())
    rotation = rotate_key(settings)
    # A gateway that had not yet seen the new pointer writes one record under the old key.
    behind = Store(settings.store_path, Sealer.from_keys(old_key))
    behind.upsert_user("ou_bob", union_id="", tenant_key="", name="ou_bob", tokens=TOKENS)
    behind.close()

    retired = rotate_key(settings, retire=True)

    # The clean-up step after a rotation: the primary stays, the straggler moves under it,
    # and only then is the old key removed.
    assert retired.primary == rotation.primary
    assert (settings.keys_dir / "primary").read_text().strip() == rotation.primary
    assert retired.resealed >= 1 and retired.still_old == set()
    assert retired.retired == [old_kid]
    assert [p.stem for p in settings.keys_dir.glob("*.key")] == [rotation.primary]
    store = open_store(settings)
    assert store.load_tokens("ou_bob")[0] == TOKENS
    assert store.kids_in_use() == {rotation.primary}
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


# -- retiring keys that backups still need --------------------------------------------------


def _backed_up(tmp_path: Path) -> tuple[Settings, Path, str]:
    """A store with a user, one backup of it in the configured backup directory, and the id of
    the key that sealed both."""
    settings = settings_for(tmp_path / "data", backup_dir=tmp_path / "offsite")
    store = open_store(settings)
    seed(store, "ou_alice")
    kid = store.kids_in_use().pop()
    store.close()
    backup = write_backup(settings, state_sealer(settings), settings.backup_path)
    return settings, backup, kid


def test_retire_keeps_a_key_that_a_backup_needs_and_names_the_backup(tmp_path: Path) -> None:
    settings, backup, old_kid = _backed_up(tmp_path)
    first = rotate_key(settings)
    second = rotate_key(settings)

    retired = rotate_key(settings, retire=True)

    # The key between the two rotations sealed no backup: it goes; the backup's key stays.
    assert retired.primary == second.primary
    assert retired.retired == [first.primary]
    assert retired.kept_for_backups == {old_kid: [backup]}
    assert retired.unrestorable == {}
    assert sorted(p.stem for p in settings.keys_dir.glob("*.key")) == sorted(
        [old_kid, second.primary]
    )
    snapshot = open_snapshot(backup.read_bytes(), state_sealer(settings))
    assert snapshot.key_id == old_kid


def test_retire_with_force_removes_the_key_and_names_the_backups_it_loses(
    tmp_path: Path,
) -> None:
    settings, backup, old_kid = _backed_up(tmp_path)
    rotate_key(settings)

    rotation = rotate_key(settings, retire=True, force=True)

    assert rotation.retired == [old_kid]
    assert rotation.unrestorable == {old_kid: [backup]}
    assert rotation.kept_for_backups == {}
    with pytest.raises(BackupError, match=old_kid):
        open_snapshot(backup.read_bytes(), state_sealer(settings))


def test_a_backup_whose_key_cannot_be_read_keeps_every_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    store = open_store(settings)
    seed(store, "ou_alice")
    kid = store.kids_in_use().pop()
    store.close()
    unreadable = settings.backup_path / "larkgate-20261204-120000-ab12.lgbackup"
    unreadable.mkdir(parents=True)  # reading it fails, as a file without permission would
    rotate_key(settings)

    rotation = rotate_key(settings, retire=True)

    assert rotation.retired == [] and rotation.kept_for_backups == {kid: [unreadable]}


def test_rotate_key_retire_command_refuses_to_drop_a_backups_key_without_force(
    tmp_path: Path,
) -> None:
    settings, backup, old_kid = _backed_up(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "LARKGATE_DATA_DIR": str(settings.data_dir),
        "LARKGATE_BACKUP_DIR": str(settings.backup_path),
    }

    def rotate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "larkgate.cli", "rotate-key", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    rotated = rotate()
    assert rotated.returncode == 0, rotated.stderr
    primary = (settings.keys_dir / "primary").read_text().strip()
    assert primary != old_kid

    kept = rotate("--retire")
    assert kept.returncode == 1, kept.stderr
    assert f"primary key: {primary} (unchanged" in kept.stdout
    assert (settings.keys_dir / "primary").read_text().strip() == primary
    assert f"key {old_kid} kept" in kept.stdout and backup.name in kept.stdout
    assert "--force" in kept.stdout
    assert (settings.keys_dir / f"{old_kid}.key").exists()

    lonely = rotate("--force")
    assert lonely.returncode == 2 and "--force only goes with --retire" in lonely.stderr

    forced = rotate("--retire", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"warning: key {old_kid} removed" in forced.stdout and backup.name in forced.stdout
    assert not (settings.keys_dir / f"{old_kid}.key").exists()
