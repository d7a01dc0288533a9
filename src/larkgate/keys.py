"""Where the sealing keys live, the key check at start, and ``larkgate rotate-key``.

Without the key setting, keys are files: ``<data_dir>/keys/<kid>.key`` (base64, mode 0600)
and ``<data_dir>/keys/primary`` naming the key new records are sealed with. The first start
creates both. A rotation writes a new key file, then points ``primary`` at it (each by an
atomic rename), then re-seals every record. A running gateway follows without a restart:
before each seal it looks whether ``primary`` changed, and a record naming a key id it has not
seen makes it read the directory again. Old key files stay, so nothing in flight breaks, until
the later clean-up, ``rotate-key --retire``, removes the ones no record uses. That step makes
no new key (a record still under an old key is first re-sealed under the current one). It
keeps a key that sealed a backup in the backup directory (that backup could never be restored
without it) unless ``--force`` says to remove it anyway; backups kept elsewhere it cannot see.

With ``LARKGATE_ENCRYPTION_KEY`` set, that key seals; key files and
``LARKGATE_PREVIOUS_ENCRYPTION_KEYS`` only open. Rotating then means: set the new key and list
the old one as previous, restart, run ``rotate-key``, drop the previous key.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backup import UNKNOWN_KEY, backups_by_key
from .config import ENV_PREFIX, ConfigError, Settings
from .crypto import KeySet, Sealer, decode_key, encode_key, key_id, new_key
from .store import Store

log = logging.getLogger(__name__)

KEY_SUFFIX = ".key"
PRIMARY_FILE = "primary"
LEGACY_KEY_FILE = "secret.key"
# A record the gateway sealed just before the pointer moved can land after a pass; a few passes
# catch it, and more than that means something keeps writing under an old key.
RESEAL_PASSES = 5


class KeyFileError(ConfigError):
    """A key file or the primary pointer is missing, unreadable or does not match its name."""


def write_private_file(path: Path, text: str) -> None:
    """Write a 0600 file atomically: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_primary(path: Path, key: bytes) -> str:
    """The key file first, then the pointer: a reader never sees a pointer to a missing file."""
    kid = key_id(key)
    write_private_file(path / f"{kid}{KEY_SUFFIX}", encode_key(key) + "\n")
    write_private_file(path / PRIMARY_FILE, kid + "\n")
    return kid


class KeyDirectory:
    """A `KeySource` over a key directory, plus keys given by settings."""

    def __init__(
        self, path: Path, fixed_primary: bytes | None = None, extra: Sequence[bytes] = ()
    ) -> None:
        self.path = path
        self._fixed = fixed_primary
        self._extra = tuple(extra)
        self._pointer_stamp: tuple[int, int, int] | None = None
        self._keys = self._read()

    @property
    def fixed(self) -> bool:
        """True when the key setting, not the pointer file, names the primary key."""
        return self._fixed is not None

    def current(self) -> KeySet:
        if self._fixed is None and self._stamp() != self._pointer_stamp:
            self._keys = self._read_or_keep()
        return self._keys

    def reload(self) -> KeySet:
        self._keys = self._read_or_keep()
        return self._keys

    def add_primary(self, key: bytes) -> str:
        """Store a new key and make it the one that seals; returns its key id."""
        kid = _write_primary(self.path, key)
        self.reload()
        return kid

    def key_files(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.path.glob(f"*{KEY_SUFFIX}"))}

    def _read_or_keep(self) -> KeySet:
        try:
            return self._read()
        except (OSError, KeyFileError) as exc:
            # A running gateway keeps sealing and opening with what it has rather than fail
            # every login because someone is editing the key directory; it looks again when
            # the pointer changes or a record names a key it does not know.
            self._pointer_stamp = self._stamp()
            log.error(
                "key directory %s unreadable, keeping the keys in memory: %s", self.path, exc
            )
            return self._keys

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = (self.path / PRIMARY_FILE).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> KeySet:
        keys: dict[str, bytes] = {}
        for kid, file in self.key_files().items():
            try:
                key = decode_key(file.read_text())
            except ValueError as exc:
                raise KeyFileError(f"key file {file} is invalid: {exc}") from None
            if key_id(key) != kid:
                raise KeyFileError(f"key file {file} holds key {key_id(key)}, not {kid}")
            keys[kid] = key
        for key in self._extra:
            keys[key_id(key)] = key
        if self._fixed is not None:
            primary = key_id(self._fixed)
            keys[primary] = self._fixed
            return KeySet(primary, keys)

        stamp = self._stamp()
        pointer = self.path / PRIMARY_FILE
        try:
            primary = pointer.read_text().strip()
        except FileNotFoundError:
            raise KeyFileError(f"{pointer} is missing: it names the key that seals") from None
        if primary not in keys:
            raise KeyFileError(f"{pointer} names key {primary}, but {primary}{KEY_SUFFIX} is gone")
        self._pointer_stamp = stamp
        return KeySet(primary, keys)


def open_keys(settings: Settings, *, create: bool = True) -> KeyDirectory:
    """The gateway's keys; the first start without a key setting creates the first key file.

    ``create=False`` (the admin commands) never writes one: no key file is an error."""
    path = settings.keys_dir
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    fixed = _setting_key(settings.encryption_key.get_secret_value(), "ENCRYPTION_KEY")
    extra = [
        _setting_key(k.get_secret_value(), "PREVIOUS_ENCRYPTION_KEYS")
        for k in settings.previous_encryption_keys
    ]
    if create and fixed is None and not (path / PRIMARY_FILE).exists():
        _create_first_key(path, settings.data_dir / LEGACY_KEY_FILE)
    try:
        return KeyDirectory(path, fixed, [k for k in extra if k is not None])
    except OSError as exc:
        raise KeyFileError(f"key directory {path} is unreadable: {exc}") from None


def _setting_key(text: str, name: str) -> bytes | None:
    if not text:
        return None
    try:
        return decode_key(text)
    except ValueError as exc:
        raise ConfigError(f"setting {ENV_PREFIX}{name} is invalid: {exc}") from None


def _create_first_key(path: Path, legacy: Path) -> None:
    """A new key, or the single key file of earlier versions moved into the directory."""
    if legacy.exists():
        try:
            key = decode_key(legacy.read_text())
        except ValueError as exc:
            raise KeyFileError(f"key file {legacy} is invalid: {exc}") from None
    else:
        key = new_key()
    kid = _write_primary(path, key)
    if legacy.exists():
        legacy.unlink()
        log.info("moved key file %s to %s", legacy, path / f"{kid}{KEY_SUFFIX}")
    else:
        log.info("created key %s in %s", kid, path)


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """The store, refusing at start a key that does not open what is already sealed there.

    ``create=False``: open a store and keys a gateway made, never a new key."""
    return _open_checked(settings, create)[0]


def _open_checked(settings: Settings, create: bool = True) -> tuple[Store, KeyDirectory]:
    keys = open_keys(settings, create=create)
    store = Store(settings.store_path, Sealer(keys))
    problem = store.key_problem()
    if problem is not None:
        store.close()
        raise ConfigError(f"wrong key: {problem}. {_key_hint(settings, keys)}")
    return store, keys


def _key_hint(settings: Settings, keys: KeyDirectory) -> str:
    if keys.fixed:
        return (
            f"Set {ENV_PREFIX}ENCRYPTION_KEY to the key this store was sealed with, or list that "
            f"key in {ENV_PREFIX}PREVIOUS_ENCRYPTION_KEYS"
        )
    return (
        f"Put the missing key file back into {keys.path}, or set {ENV_PREFIX}ENCRYPTION_KEY "
        "to the key this store was sealed with"
    )


@dataclass(frozen=True)
class Rotation:
    """What a rotation did. ``kept_for_backups``: keys ``--retire`` left in place because
    backups need them; ``unrestorable``: backups whose key ``--force`` removed anyway."""

    primary: str
    resealed: int
    retired: list[str]
    still_old: set[str]
    kept_for_backups: dict[str, list[Path]] = field(default_factory=dict)
    unrestorable: dict[str, list[Path]] = field(default_factory=dict)


def rotate_key(settings: Settings, *, retire: bool = False, force: bool = False) -> Rotation:
    """Make a new primary key (unless the setting names it) and re-seal every record under it.

    With ``retire``, the later clean-up instead: no new key; records an earlier rotation left
    under old keys are re-sealed under the current primary, then the key files no record uses
    are removed, except those that sealed a backup in the backup directory; ``force`` removes
    those too. Safe while a gateway runs on the same data directory: see the module docstring.
    """
    store, keys = _open_checked(settings)
    try:
        rotating = not (retire or keys.fixed)
        primary = keys.add_primary(new_key()) if rotating else keys.current().primary
        resealed = 0
        for _ in range(RESEAL_PASSES):
            resealed += store.reseal()
            still_old = store.kids_in_use() - {primary}
            if not still_old:
                break
        in_use = store.kids_in_use() | {primary}
    finally:
        store.close()
    log.info("re-sealed %d records under key %s", resealed, primary)
    if not retire:
        return Rotation(primary, resealed, [], still_old)
    retired, needed_by = _retire_unused(keys, in_use, backups_by_key(settings.backup_path), force)
    unrestorable = {kid: paths for kid, paths in needed_by.items() if kid in retired}
    for kid, paths in unrestorable.items():
        log.warning(
            "removed key %s although backups need it; they cannot be restored any more: %s",
            kid,
            ", ".join(p.name for p in paths),
        )
    kept_for_backups = {kid: paths for kid, paths in needed_by.items() if kid not in retired}
    return Rotation(primary, resealed, retired, still_old, kept_for_backups, unrestorable)


def _retire_unused(
    keys: KeyDirectory, in_use: set[str], backups: dict[str, list[Path]], force: bool
) -> tuple[list[str], dict[str, list[Path]]]:
    """(key ids removed, backups each unused key seals); without ``force`` such keys stay.

    A backup whose header could not be read might need any key, so it holds every one.
    """
    retired: list[str] = []
    needed_by: dict[str, list[Path]] = {}
    for kid, file in keys.key_files().items():
        if kid in in_use:
            continue
        sealed = backups.get(kid, []) + backups.get(UNKNOWN_KEY, [])
        if sealed:
            needed_by[kid] = sealed
            if not force:
                continue
        file.unlink()
        retired.append(kid)
    return retired, needed_by


def rotate_key_command(settings: Settings, *, retire: bool, force: bool = False) -> int:
    """``larkgate rotate-key``: prints what it did; exit 1 if old keys are still in use, or if
    ``--retire`` kept a key because backups need it."""
    rotation = rotate_key(settings, retire=retire, force=force)
    print(
        f"primary key: {rotation.primary}"
        + (" (unchanged: --retire makes no new key)" if retire else "")
    )
    print(f"records re-sealed: {rotation.resealed}")
    if rotation.retired:
        print(f"key files removed: {', '.join(rotation.retired)}")
    for kid, paths in sorted(rotation.unrestorable.items()):
        print(
            f"warning: key {kid} removed; these backups need it and cannot be restored: "
            f"{_names(paths)}"
        )
    for kid, paths in sorted(rotation.kept_for_backups.items()):
        print(f"key {kid} kept: these backups in {settings.backup_path} need it: {_names(paths)}")
    if rotation.kept_for_backups:
        print(
            "Delete those backups, or move them elsewhere together with a copy of the key, and "
            "retire again; or run rotate-key --retire --force to remove the key anyway."
        )
    if rotation.still_old:
        print(
            f"records still sealed with {', '.join(sorted(rotation.still_old))}: "
            "run rotate-key again"
        )
    return 1 if rotation.still_old or rotation.kept_for_backups else 0


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)
