"""Drains a child's stdout and stderr into the owner's log file, rotated by size.

A child that cannot write blocks, so its pipes are always read. The file changes when a warm
spare is handed to a user: from then on its output lands in that user's log. Each line goes
through the same redaction as the gateway's own log: lark-mcp and the Feishu SDK may print a
failed request with its headers, and the user's token rides in one of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import BinaryIO

from ..logs import redact

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 5 * 1024 * 1024
KEPT_ROTATIONS = 2


class ChildLog:
    def __init__(self, path: Path) -> None:
        self._file: BinaryIO | None = None
        self.path = path
        self._open(path)

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)
        self.path = path

    def move_to(self, path: Path) -> None:
        self.close()
        self._open(path)

    def write(self, line: bytes) -> None:
        if self._file is None:
            return
        self._file.write(line)
        if self._file.tell() > MAX_LOG_BYTES:
            self._rotate()

    def _rotate(self) -> None:
        self.close()
        for n in range(KEPT_ROTATIONS, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if newer.exists():
                newer.replace(older)
        self._open(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                # A line longer than the reader's limit: keep the part we can take.
                line = await stream.read(64 * 1024)
            if not line:
                return
            try:
                self.write(redact(line.decode(errors="replace")).encode())
            except OSError as exc:
                log.warning("child log write failed (%s); output dropped", exc.strerror)
