"""The emulator's movable clock, so a test can make a week pass in a second."""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall time plus an offset that only moves forward."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        if seconds < 0:
            # Going back would resurrect expired codes and tokens, which Feishu never does.
            raise ValueError("the emulator clock only moves forward")
        with self._lock:
            self._offset += seconds
            return time.time() + self._offset

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0
