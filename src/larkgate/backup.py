"""Backups: a consistent, sealed snapshot of the store and settings, and its restore.

The store is copied with SQLite's online backup API from a connection of its own, so a backup
is consistent and safe while the gateway serves. The snapshot (the database and the settings
without their secret values) is compressed and sealed with the store's primary key
(AES-256-GCM, the same key that seals tokens), so a backup file is useless without that key.
A restore refuses a snapshot whose key this gateway does not have, checks the database, keeps
the current store aside and only then puts the snapshot in place; the gateway must be stopped.

The gateway also takes backups every ``backup_interval`` and keeps the newest ``backup_keep``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from . import __version__
from .config import Settings
from .crypto import KID_BYTES, Sealer, SealError
from .datadir import RESTORE, DataDirBusy, DataDirLock

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

MAGIC = b"LARKGATE-BACKUP 1\n"
SEAL_OWNER = "larkgate:backup"
SUFFIX = ".lgbackup"
SCHEDULED_PREFIX = "larkgate-"
DB_NAME = "larkgate.db"
UNKNOWN_KEY = "?"


class BackupError(Exception):
    """A backup or restore cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Snapshot:
    created_at: float
    version: str
    key_id: str
    settings: dict[str, Any]
    database: bytes


def _settings_without_secrets(settings: Settings) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            shown[name] = "(set)" if value.get_secret_value() else ""
        elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
            shown[name] = ["(set)"] * len(value)
        else:
            shown[name] = value
    return json.loads(json.dumps(shown, default=str))  # type: ignore[no-any-return]


def copy_database(db_path: Path) -> bytes:
    """A consistent copy of the live store, taken without stopping its writers."""
    if not db_path.exists():
        raise BackupError(f"no store at {db_path}: nothing to back up")
    tmp = db_path.with_name(f".{db_path.name}.backup-{secrets.token_hex(4)}")
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        target = sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            target.close()
        return tmp.read_bytes()
    finally:
        source.close()
        tmp.unlink(missing_ok=True)


def seal_snapshot(settings: Settings, sealer: Sealer, database: bytes) -> bytes:
    document = {
        "format": 1,
        "created_at": time.time(),
        "version": __version__,
        "key_id": sealer.primary_kid,
        "settings": _settings_without_secrets(settings),
        "database": base64.b64encode(database).decode(),
    }
    packed = zlib.compress(json.dumps(document).encode(), 6)
    return MAGIC + sealer.seal(packed, SEAL_OWNER)


def open_snapshot(raw: bytes, sealer: Sealer) -> Snapshot:
    if not raw.startswith(MAGIC):
        raise BackupError("not a LarkGate backup (wrong header)")
    body = raw[len(MAGIC) :]
    kid = Sealer.record_kid(body)
    try:
        packed = sealer.open_sealed(body, SEAL_OWNER)
    except SealError:
        raise BackupError(
            f"this snapshot was sealed with key id {kid}, which does not open here. Set "
            "LARKGATE_ENCRYPTION_KEY (or restore the key files) of the gateway that wrote it"
        ) from None
    document = json.loads(zlib.decompress(packed))
    return Snapshot(
        created_at=float(document["created_at"]),
        version=str(document["version"]),
        key_id=str(document["key_id"]),
        settings=dict(document["settings"]),
        database=base64.b64decode(document["database"]),
    )


def backups_by_key(directory: Path) -> dict[str, list[Path]]:
    """The backups in ``directory`` by the id of the key that sealed them (read from the
    header, nothing is opened). A backup whose header cannot be read is listed under
    ``UNKNOWN_KEY``: any key may be the one it needs."""
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            with path.open("rb") as f:
                head = f.read(len(MAGIC) + KID_BYTES)
        except OSError as exc:
            log.warning("cannot read backup %s to tell its key: %s", path, exc)
            found.setdefault(UNKNOWN_KEY, []).append(path)
            continue
        if head.startswith(MAGIC) and len(head) == len(MAGIC) + KID_BYTES:
            found.setdefault(Sealer.record_kid(head[len(MAGIC) :]), []).append(path)
    return found


def write_backup(settings: Settings, sealer: Sealer, target: Path) -> Path:
    """Write one snapshot to ``target`` (a file, or a directory to name one in)."""
    sealed = seal_snapshot(settings, sealer, copy_database(settings.data_dir / DB_NAME))
    if target.is_dir() or not target.suffix:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target = target / f"{SCHEDULED_PREFIX}{stamp}-{secrets.token_hex(2)}{SUFFIX}"
    _write_private(target, sealed)
    return target


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled backups; return what was deleted."""
    found = sorted(directory.glob(f"{SCHEDULED_PREFIX}*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    doomed = found[:-keep] if len(found) > keep else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def restore(settings: Settings, sealer: Sealer, source: Path) -> Snapshot:
    """Put a snapshot in place of the store; the previous store is kept beside it."""
    snapshot = open_snapshot(source.read_bytes(), sealer)
    db_path = settings.data_dir / DB_NAME
    try:
        lock = DataDirLock.claim(settings.data_dir, RESTORE)
    except DataDirBusy:
        raise BackupError(
            f"a gateway is serving from {settings.data_dir}; stop it before a restore"
        ) from None
    with lock:
        staged = db_path.with_name(f".{DB_NAME}.restore-{secrets.token_hex(4)}")
        _write_private(staged, snapshot.database)
        try:
            _check_database(staged)
            if db_path.exists():
                kept = db_path.with_name(f"{DB_NAME}.before-restore-{int(time.time())}")
                _copy_live(db_path, kept)
                for extra in ("-wal", "-shm"):
                    db_path.with_name(DB_NAME + extra).unlink(missing_ok=True)
                log.info("previous store kept as %s", kept.name)
            os.replace(staged, db_path)
        finally:
            staged.unlink(missing_ok=True)
    return snapshot


def _check_database(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        verdict = db.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the snapshot's database is damaged: {exc}") from None
    finally:
        db.close()
    if verdict is None or verdict[0] != "ok":
        raise BackupError(f"the snapshot's database is damaged: {verdict}")


def _copy_live(db_path: Path, target: Path) -> None:
    source = sqlite3.connect(db_path)
    dest = sqlite3.connect(target)
    try:
        source.backup(dest)
    finally:
        dest.close()
        source.close()
    target.chmod(0o600)


class BackupSchedule:
    """Takes a backup every ``backup_interval`` and prunes to ``backup_keep``."""

    def __init__(self, settings: Settings, sealer: Sealer, metrics: Metrics | None) -> None:
        self._settings = settings
        self._sealer = sealer
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._taking: asyncio.Future[Path | None] | None = None
        self.last: Path | None = None

    def start(self) -> None:
        if self._settings.backup_interval > 0:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._taking is not None:
            # A backup under way finishes (and prunes) before the gateway closes its store.
            await asyncio.gather(self._taking, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.backup_interval)
            self._taking = asyncio.ensure_future(self.take())
            await asyncio.shield(self._taking)

    def _write_and_prune(self) -> tuple[Path, list[Path]]:
        directory = self._settings.backup_path
        path = write_backup(self._settings, self._sealer, directory)
        return path, prune(directory, self._settings.backup_keep)

    async def take(self) -> Path | None:
        try:
            path, removed = await asyncio.to_thread(self._write_and_prune)
        except (OSError, sqlite3.Error, BackupError) as exc:
            log.error("scheduled backup failed: %s", exc)
            self._count("failed")
            return None
        self.last = path
        self._count("ok")
        log.info("scheduled backup written: %s (%d old ones removed)", path.name, len(removed))
        return path

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.backups.labels(outcome).inc()


def state_sealer(settings: Settings, *, create: bool = True) -> Sealer:
    """The sealer of the store's keys (the one that seals tokens); ``create=False`` never
    writes a first key."""
    from .keys import open_keys

    return Sealer(open_keys(settings, create=create))
