"""Processes a benchmark starts, each in its own process group, all stopped when it exits.

Every server runs on 127.0.0.1. A stop first sends SIGTERM to the process group (the gateway
then stops its own children), waits, then SIGKILLs the group and every descendant still alive,
since lark-mcp children live in process groups of their own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

STOP_GRACE = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Started:
    """One process this benchmark started, its log file and what it spawned."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE) -> None:
        leftovers = self.descendants()
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"[bench] {self.name} ignored SIGTERM for {grace:g}s; killing it")
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for proc in leftovers:
            if proc.is_running():
                _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    proc.kill()


class ProcessSet:
    """Starts processes and guarantees they are stopped at exit, also on SIGTERM or Ctrl-C."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[Started] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(name, popen, log_path)
        self._started.append(started)
        return started

    def stop(self, started: Started) -> None:
        started.stop()
        if started in self._started:
            self._started.remove(started)

    def stop_all(self) -> None:
        for started in reversed(self._started):
            started.stop()
        self._started.clear()


def _exit_on_signal(signum: int, frame: object) -> None:
    # Turn the signal into SystemExit so that finally blocks and atexit stop the processes.
    sys.exit(128 + signum)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
