"""Test helpers: a real gateway on loopback, a browser that plays the Feishu login, MCP clients.

The gateway runs in a background thread under uvicorn exactly as `larkgate serve` runs it;
tests talk to it over HTTP only, and reach into it (through `GatewayServer.run`) only to do
what an operator or a fault would do: kill a child, move the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest
import uvicorn
from mcp import Client
from mcp.client.sse import sse_client
from playwright.sync_api import Browser, sync_playwright

from larkgate.app import Gateway, create_app
from larkgate.clock import Clock
from larkgate.config import Settings, load_settings
from larkgate.emulator import RunningEmulator
from larkgate.httpserver import server_config

REPO = Path(__file__).resolve().parent.parent
LARK_MCP_CLI = REPO / "node_modules/@larksuiteoapi/lark-mcp/dist/cli.js"
LOGIN_LINK = re.compile(r"https?://[^\s\"']+/oauth/start\?login=[A-Za-z0-9_-]+")
LOGIN_FORM_ACTION = re.compile(r'<form method="post" action="([^"]+/oauth/start)"')
LOGIN_FORM_FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)"')

T = TypeVar("T")


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium under Playwright (no browser download)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_settings(data_dir: Path, emulator: RunningEmulator, **overrides: Any) -> Settings:
    port = overrides.pop("port", None) or free_port()
    values: dict[str, Any] = {
        "app_id": emulator.state.config.app_id,
        "app_secret": emulator.state.config.app_secret,
        "open_base_url": emulator.url,
        "accounts_base_url": emulator.url,
        "public_url": f"http://127.0.0.1:{port}",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": data_dir,
        "lark_mcp_cli": LARK_MCP_CLI,
        "warm_spares": 0,
        "start_timeout": 20.0,
        "stop_grace": 2.0,
        "health_interval": 1.0,
        "restart_backoff": 0.1,
        # Most tests drive the login-link flow on /mcp; tests/authserver/ ask for the default.
        "mcp_auth": "login_link",
    }
    values.update(overrides)
    return load_settings(**values)


class GatewayServer:
    """`larkgate serve` in a thread: start(), url, gateway, run(coro), stop()."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or Clock()
        self.app = create_app(settings, self.clock)
        self.gateway: Gateway = self.app.state.gateway
        config = server_config(self.app, settings, lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        self._loop = self.gateway.loop
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the gateway's own event loop (where its pool lives)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def confirmation_form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    """(action, fields) of the form on a login link's confirmation page."""
    assert page.status_code == 200, page.text
    action = LOGIN_FORM_ACTION.search(page.text)
    fields = dict(LOGIN_FORM_FIELD.findall(page.text))
    assert action and {"login", "confirm"} <= set(fields), page.text
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields.items()}


def press_login_button(browser: httpx.Client, login_link: str) -> httpx.Response:
    """Open a login link and press its page's button, as a browser would: the gateway's answer
    (a redirect to Feishu). ``browser`` keeps the page's cookie between the two requests."""
    action, fields = confirmation_form(browser.get(login_link))
    # A browser sends the page's origin with a form post (the page's referrer policy allows it).
    parts = urlsplit(login_link)
    return browser.post(
        action, data=fields, headers={"Origin": f"{parts.scheme}://{parts.netloc}"}
    )


def play_browser_login(login_link: str, user: str, *, deny: bool = False) -> httpx.Response:
    """Follow a login link as a person would: its page's button, Feishu's page, pick a user,
    back to the gateway.

    Returns the gateway's final page.
    """
    with httpx.Client(timeout=30, trust_env=False) as browser:
        start = press_login_button(browser, login_link)
        assert start.status_code == 302, start.text
        authorize = start.headers["location"]
        extra = "emulator_deny=1" if deny else f"emulator_user={user}"
        feishu = browser.get(f"{authorize}&{extra}")
        assert feishu.status_code == 302, feishu.text
        return browser.get(feishu.headers["location"])


def authorize_redirect(login_link: str) -> tuple[str, dict[str, list[str]]]:
    """The Feishu authorize URL the gateway redirects to, and its query."""
    with httpx.Client(timeout=30, trust_env=False) as browser:
        start = press_login_button(browser, login_link)
        assert start.status_code == 302
        location = start.headers["location"]
        return location, parse_qs(urlsplit(location).query)


def login_link_in(text: str | None) -> str:
    found = LOGIN_LINK.search(text or "")
    assert found, f"no login link in {text!r}"
    return found.group(0)


def login_link_of(server: GatewayServer, session_id: str) -> str:
    """The login link the gateway shows a session's client, for raw clients that read none."""
    return server.gateway.router.login_link(session_id)


@contextlib.asynccontextmanager
async def streamable_client(gateway_url: str) -> AsyncIterator[Client]:
    async with Client(f"{gateway_url}/mcp") as client:
        yield client


@contextlib.asynccontextmanager
async def sse_mcp_client(gateway_url: str) -> AsyncIterator[Client]:
    async with Client(sse_client(f"{gateway_url}/sse"), mode="legacy") as client:
        yield client


def tool_text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def lark_mcp_under(data_dir: str) -> list[psutil.Process]:
    """The lark-mcp processes whose working directory lies under a gateway's data dir."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = proc.info["cmdline"] or []
            cwd = proc.info["cwd"] or ""
        except psutil.Error:
            continue
        if any("lark-mcp" in part for part in cmdline) and cwd.startswith(data_dir):
            found.append(proc)
    return found
