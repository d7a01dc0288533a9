"""The data directory: the lock a serving gateway holds on it, and whether it holds any data.

A gateway owns its data directory alone: the store, the keys, and the children its store
lists, which the next start stops as leftovers of a crash. So ``serve`` takes an exclusive
``flock`` on ``<data_dir>/serve.lock`` before it touches any of that, and holds it until the
process ends; a second gateway on the same directory is refused before it changes anything.
The kernel drops the lock when its holder dies, so a gateway killed with ``kill -9`` never
blocks the next start. ``restore`` takes the same lock, so it never runs under a gateway.

The admin commands only read or change what a gateway made; `require_gateway_data` stops them
with one line when the directory they were pointed at holds no store, instead of creating one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from .config import ENV_PREFIX, ConfigError, Settings

LOCK_NAME = "serve.lock"
SERVE = "serve"
RESTORE = "restore"
_HOLDING = {
    SERVE: "another gateway (pid {pid}) serves from",
    RESTORE: "a restore (pid {pid}) runs in",
}


class DataDirBusy(ConfigError):
    """Another live process holds the data directory's lock."""


class NoGatewayData(ConfigError):
    """The data directory holds no store: no gateway has run there."""


class DataDirLock:
    """An exclusive hold on a data directory, for as long as the object is not released."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def claim(cls, data_dir: Path, holder: str = SERVE) -> DataDirLock:
        """Take the lock, creating the directory if need be; `DataDirBusy` if it is held.

        ``holder`` (`SERVE` or `RESTORE`) is what a second process is told holds it."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(_busy_message(data_dir, path)) from None
        except BaseException:
            os.close(fd)
            raise
        # Only for the message a second process shows: the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _busy_message(data_dir: Path, lock: Path) -> str:
    try:
        pid, _, holder = lock.read_text().strip().partition(" ")
    except OSError:
        pid, holder = "", ""
    # The holder may have the lock and not have written its pid yet.
    holding = _HOLDING.get(holder, _HOLDING[SERVE]).format(pid=pid if pid.isdigit() else "?")
    return (
        f"{holding} {data_dir.resolve()}: stop it first, or give this gateway its own "
        f"{ENV_PREFIX}DATA_DIR"
    )


def require_gateway_data(settings: Settings) -> None:
    """Stop an admin command pointed at a directory where no gateway has run."""
    store = settings.store_path
    if not store.is_file():
        raise NoGatewayData(
            f"no gateway data in {settings.data_dir.resolve()} (no {store.name} there): set "
            f"{ENV_PREFIX}DATA_DIR to the directory the gateway serves from "
            "(`larkgate demo` uses .larkgate/demo)"
        )
