"""Helpers for the operations tests: raw MCP calls, a login that keeps what it saw, a webhook
receiver on loopback, the CLI and `larkgate serve` as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil

from larkgate.emulator import RunningEmulator
from support import LARK_MCP_CLI, REPO, lark_mcp_under, login_link_in, press_login_button

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t"}},
}
CHAT_LIST = "im_v1_chat_list"


def call_message(request_id: int = 2) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": CHAT_LIST, "arguments": {"params": {"page_size": 5}}},
    }


@dataclass
class Seen:
    """Secrets a login flow handed out, so a test can look for them where they must not be."""

    session_ids: list[str] = field(default_factory=list)
    login_handles: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.session_ids, *self.login_handles, *self.states, *self.codes]


def login(link: str, user: str, seen: Seen, verify: Any = True) -> httpx.Response:
    """Play the browser through Feishu's login, keeping the state and code it carried."""
    seen.login_handles += parse_qs(urlsplit(link).query)["login"]
    with httpx.Client(timeout=30, trust_env=False, verify=verify) as browser:
        start = press_login_button(browser, link)
        assert start.status_code == 302, start.text
        authorize = start.headers["location"]
        seen.states += parse_qs(urlsplit(authorize).query)["state"]
        feishu = browser.get(f"{authorize}&emulator_user={user}")
        assert feishu.status_code == 302, feishu.text
        back = feishu.headers["location"]
        seen.codes += parse_qs(urlsplit(back).query).get("code", [])
        return browser.get(back)


def open_session(http: httpx.Client, seen: Seen) -> tuple[str, str]:
    """initialize over Streamable HTTP: (session id, login link)."""
    init = http.post("/mcp", json=INIT, headers=ACCEPT)
    assert init.status_code == 200, init.text
    session_id = init.headers["mcp-session-id"]
    seen.session_ids.append(session_id)
    return session_id, login_link_in(init.json()["result"]["instructions"])


def call_tool(http: httpx.Client, session_id: str, request_id: int = 2) -> dict[str, Any]:
    reply = http.post(
        "/mcp", json=call_message(request_id), headers={**ACCEPT, "Mcp-Session-Id": session_id}
    )
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()["result"]
    return result


def logged_in_session(url: str, user: str, seen: Seen, verify: Any = True) -> str:
    with httpx.Client(base_url=url, timeout=30, trust_env=False, verify=verify) as http:
        session_id, link = open_session(http, seen)
        page = login(link, user, seen, verify)
        assert page.status_code == 200, page.text
        result = call_tool(http, session_id)
        assert not result.get("isError"), result
        assert user.capitalize() in result["content"][0]["text"]
    return session_id


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- a webhook receiver ---------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every POST; ``answer`` sets what it replies."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer: tuple[int, dict[str, Any]] = (200, {"code": 0, "msg": "success"})
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status, answer = receiver.answer
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- real processes -------------------------------------------------------------------------


def gateway_env(
    data_dir: Path, emulator: RunningEmulator, port: int, **extra: str
) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(data_dir),
        "LARKGATE_APP_ID": emulator.state.config.app_id,
        "LARKGATE_APP_SECRET": emulator.state.config.app_secret,
        "LARKGATE_OPEN_BASE_URL": emulator.url,
        "LARKGATE_ACCOUNTS_BASE_URL": emulator.url,
        "LARKGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LARKGATE_PORT": str(port),
        "LARKGATE_DATA_DIR": str(data_dir),
        "LARKGATE_LARK_MCP_CLI": str(LARK_MCP_CLI),
        "LARKGATE_WARM_SPARES": "0",
        "LARKGATE_STOP_GRACE": "2",
        "LARKGATE_MCP_AUTH": "login_link",
    }
    env.update(extra)
    return env


def larkgate(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as an operator would, with the gateway's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "larkgate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if check:
        assert done.returncode == 0, f"larkgate {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


class Serve:
    """`larkgate serve` as its own process; stderr (its log) goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['LARKGATE_PORT']}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "larkgate.cli", "serve"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=REPO,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not become healthy")

    def stop(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def children(self) -> list[psutil.Process]:
        return lark_mcp_under(self.env["LARKGATE_DATA_DIR"])


def kill_all(processes: Iterator[psutil.Process] | list[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
