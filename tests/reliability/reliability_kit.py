"""Shared pieces of the reliability suite: sizes, `larkgate serve` as a process, raw MCP calls.

Sizes are small by default so that CI stays bounded; ``LARKGATE_LONG_TESTS=1`` selects the
long variants. Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from support import (
    LARK_MCP_CLI,
    GatewayServer,
    gateway_settings,
    login_link_in,
    play_browser_login,
)

LONG = os.environ.get("LARKGATE_LONG_TESTS") == "1"

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "reliability", "version": "1"},
    },
}
CHAT_LIST = "im_v1_chat_list"
CHAT_ARGS = {"params": {"page_size": 5}}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": CHAT_LIST, "arguments": CHAT_ARGS},
}

# Login names whose capitalised forms never contain one another, so "Alfa's team chat" in a
# reply names exactly one person. The emulator's first user owns the shared "All hands" chat
# that every user sees; "owner" takes that place and never logs in.
PEOPLE = [
    "alfa",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
]

# The head and body deadlines the shared `larkgate serve` runs with (LARKGATE_HEAD_TIMEOUT,
# LARKGATE_BODY_TIMEOUT), shorter than the defaults so that a slowloris test stays short.
STALL_DEADLINE = 4.0

# What every report line of the suite is collected into; conftest prints it at the end.
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)
    print(line, flush=True)


def emulator_config(people: int) -> EmulatorConfig:
    return EmulatorConfig(users=[make_user("owner"), *(make_user(p) for p in PEOPLE[:people])])


def display_name(login: str) -> str:
    return login.capitalize()


def own_chat(login: str) -> str:
    return f"{display_name(login)}'s team chat"


def foreign_chats(text: str, login: str, everyone: list[str]) -> list[str]:
    """Names of other people whose own chat appears in text."""
    return [p for p in everyone if p != login and own_chat(p) in text]


def emulator_tokens(emulator: RunningEmulator, open_id: str) -> dict[str, Any]:
    """The user's current tokens, as the emulator's control endpoint tells a test."""
    with httpx.Client(base_url=emulator.url, timeout=30, trust_env=False) as http:
        response = http.get("/_emulator/tokens", params={"open_id": open_id})
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found


def issued_tokens(emulator: RunningEmulator, open_ids: list[str]) -> set[str]:
    """Every live access and refresh token of these users, in all their grants."""
    tokens: set[str] = set()
    for open_id in open_ids:
        described = emulator_tokens(emulator, open_id)
        for grant in described.get("grants", []):
            tokens.update(t for t in (grant["access_token"], grant["refresh_token"]) if t)
    return tokens


def new_streamable_session(http: httpx.Client) -> tuple[str, str]:
    """(session id, login link) of a fresh Streamable HTTP session."""
    response = http.post("/mcp", json=INIT, headers=ACCEPT)
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"], login_link_in(
        response.json()["result"]["instructions"]
    )


def log_in(gateway_url: str, login: str) -> str:
    """A Streamable HTTP session of `login`, logged in through the browser flow."""
    return log_in_by_link(gateway_url, login)[0]


def log_in_by_link(gateway_url: str, login: str) -> tuple[str, str]:
    """(session id, login link) of a Streamable HTTP session `login` logged in through."""
    with httpx.Client(base_url=gateway_url, timeout=60, trust_env=False) as http:
        session_id, link = new_streamable_session(http)
    page = play_browser_login(link, login)
    assert page.status_code == 200, page.text
    return session_id, link


def call_chat_list(http: httpx.Client, session_id: str, request_id: int = 2) -> httpx.Response:
    body = {**CALL, "id": request_id}
    return http.post("/mcp", json=body, headers={**ACCEPT, "Mcp-Session-Id": session_id})


def result_text(reply: dict[str, Any]) -> str:
    content = reply.get("result", {}).get("content", [])
    return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))


def error_code(reply: dict[str, Any]) -> str | None:
    """The gateway's stable string code of a JSON-RPC error, if the reply is one."""
    error = reply.get("error")
    if not isinstance(error, dict):
        return None
    data = error.get("data")
    return data.get("code") if isinstance(data, dict) else None


@dataclass
class ServeProcess:
    """`larkgate serve` as a real process, as an operator runs it."""

    data_dir: Path
    emulator: RunningEmulator
    port: int
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.data_dir),
            "LARKGATE_APP_ID": self.emulator.state.config.app_id,
            "LARKGATE_APP_SECRET": self.emulator.state.config.app_secret,
            "LARKGATE_OPEN_BASE_URL": self.emulator.url,
            "LARKGATE_ACCOUNTS_BASE_URL": self.emulator.url,
            "LARKGATE_PUBLIC_URL": self.url,
            "LARKGATE_HOST": "127.0.0.1",
            "LARKGATE_PORT": str(self.port),
            "LARKGATE_DATA_DIR": str(self.data_dir),
            "LARKGATE_LARK_MCP_CLI": str(LARK_MCP_CLI),
            "LARKGATE_WARM_SPARES": "0",
            "LARKGATE_STOP_GRACE": "2",
            "LARKGATE_START_TIMEOUT": "60",
            "LARKGATE_MCP_AUTH": "login_link",
            "LARKGATE_LOG_LEVEL": "WARNING",
        }
        # The test process may run the gateway from another checkout of src/.
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        env.update(self.settings)
        return env

    def start(self, timeout: float = 90) -> ServeProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"serve-{self.port}.log"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "larkgate.cli", "serve"],
                env=self.environment(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited at start:\n{self.log_tail()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=5, trust_env=False)
                if health.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway did not become healthy:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def ps(self) -> psutil.Process:
        assert self.process is not None
        return psutil.Process(self.process.pid)

    def children(self) -> list[psutil.Process]:
        """The lark-mcp processes of this gateway, found by their working directory."""
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmdline = proc.info["cmdline"] or []
                cwd = proc.info["cwd"] or ""
            except psutil.Error:
                continue
            if any("lark-mcp" in part for part in cmdline) and cwd.startswith(str(self.data_dir)):
                found.append(proc)
        return found

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGKILL)
        for child in self.children():
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                child.kill()


def compact(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def running_gateway(
    data_dir: Path, emulator: RunningEmulator, **overrides: Any
) -> Iterator[GatewayServer]:
    """A gateway in a thread for a whole module; stopped afterwards."""
    server = GatewayServer(gateway_settings(data_dir, emulator, **overrides)).start()
    try:
        yield server
    finally:
        server.stop()


class Arrivals:
    """Counts requests of one endpoint class as they reach the emulator."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.count = 0

    def note(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout)

    def is_set(self) -> bool:
        return self.count > 0

    def wait(self, timeout: float = 60) -> bool:
        return self.wait_for(1, timeout)


@contextlib.contextmanager
def arrivals(emulator: RunningEmulator, endpoint: str) -> Iterator[Arrivals]:
    """Counts requests of this endpoint class ("token", "openapi") reaching the emulator.

    The emulator asks its fault plan how long to hang each request as it arrives, before any
    answer; a test learns from that moment that a call is in flight.
    """
    faults = emulator.state.faults
    original = faults.hang_for
    seen = Arrivals()

    def hang_for(asked: Any) -> float:
        if asked == endpoint:
            seen.note()
        return original(asked)

    faults.hang_for = hang_for  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del faults.hang_for


class UnhandledErrors(logging.Handler):
    """Exceptions nobody handled: uvicorn's "Exception in ASGI application" and asyncio's
    "Task exception was never retrieved", from a gateway running in this process."""

    LOGGERS = ("uvicorn.error", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in self.LOGGERS and record.exc_info:
            self.records.append(record)

    def summary(self) -> list[str]:
        found = []
        for record in self.records:
            exc = record.exc_info[1] if record.exc_info else None
            found.append(f"{record.name}: {record.getMessage()[:80]}: {exc!r}"[:300])
        return found


@contextlib.contextmanager
def unhandled_errors() -> Iterator[UnhandledErrors]:
    handler = UnhandledErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
