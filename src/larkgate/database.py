"""One SQLite connection shared by the gateway's stores: WAL, full sync, one lock.

Every write is one transaction, so a crash leaves either the old or the new record. Calls are
short and synchronous. The reads every tool call makes (its session, its user, the user's
sealed tokens, the client's access token) are remembered until anything writes to the
database, through this connection or any other (SQLite's ``data_version``): they cost a
quarter of the gateway's CPU per call when read afresh each time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# Past this many remembered reads (a client guessing session ids, say) the memory starts over.
MEMO_LIMIT = 10_000


class Database:
    def __init__(self, path: Path, schema: str, *, foreign_keys: bool = False) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if foreign_keys:
            self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(schema)
        self._memo: dict[Hashable, Any] = {}
        self._generation = 0  # moves on every write seen; a read older than it is not kept
        self._data_version = -1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._forget()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    def memo(self, key: Hashable, load: Callable[[], T]) -> T:
        """``load()``, remembered until the database changes. The value must be immutable."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._data_version = version
                self._forget()
            if key in self._memo:
                value: T = self._memo[key]
                return value
            generation = self._generation
        value = load()
        with self._lock:
            if generation == self._generation:
                if len(self._memo) >= MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = value
        return value

    def _forget(self) -> None:
        self._memo.clear()
        self._generation += 1
