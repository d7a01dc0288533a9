"""Starts and stops one lark-mcp child process.

A child is the real ``dist/cli.js`` run by ``node`` in SSE mode on a loopback port, with
an environment built from nothing, its own HOME and working directory, and its own process
group so that a stop reaches every process it made. The user's token is never in its argv or
environment: the gateway sends it as the Bearer header of each request.

This module is the seam where a cluster scheduler replaces local processes: the pool only uses
``Spawner.start`` and the ``Child`` handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from ..config import Settings
from .channel import ChannelClosed, ChannelSet, child_session, refused_reply
from .childlog import ChildLog

log = logging.getLogger(__name__)

# lark-mcp rejects every Bearer token it did not mint itself unless some user token is set;
# this placeholder is never sent to Feishu because each request carries the real one.
TOKEN_PLACEHOLDER = "larkgate-per-request"  # noqa: S105 (not a secret)
PING: dict[str, Any] = {"jsonrpc": "2.0", "id": "larkgate-probe", "method": "ping"}
TOOLS_LIST: dict[str, Any] = {"jsonrpc": "2.0", "id": "larkgate-warm-up", "method": "tools/list"}
PARENT_WATCH = Path(__file__).with_name("parent_watch.cjs")
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class StartFailed(Exception):
    """A child did not become ready; the message says why, without secrets."""


@dataclass(eq=False)
class Child:
    """A running lark-mcp process and what the pool knows about it."""

    child_id: str
    process: asyncio.subprocess.Process
    port: int
    home: Path
    log: ChildLog
    started_at: float = field(default_factory=time.monotonic)
    user_id: str | None = None
    in_flight: int = 0
    open_streams: int = 0
    last_used: float = field(default_factory=time.monotonic)
    drains: list[asyncio.Task[None]] = field(default_factory=list)
    channels: ChannelSet | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.open_streams == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Spawner:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._children_dir = settings.data_dir / "children"

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client for the hop to children, made on first use inside the running loop."""
        if self._http is None:
            self._http = child_session()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def command(self, port: int) -> list[str]:
        s = self._settings
        return [
            s.node_path,
            *s.child_v8_flags,
            "--require",
            str(PARENT_WATCH),
            str(s.lark_mcp_cli_path),
            "mcp",
            "-d",
            s.open_base_url,
            "-m",
            s.child_transport,
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
            "--token-mode",
            "user_access_token",
            "-t",
            s.lark_tools,
            "-l",
            s.lark_language,
            "-c",
            s.lark_tool_name_case,
        ]

    def environment(self, home: Path) -> dict[str, str]:
        s = self._settings
        return {
            "PATH": os.defpath,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "NODE_ENV": "production",
            "NODE_OPTIONS": f"--max-old-space-size={s.child_heap_mb}",
            "APP_ID": s.app_id,
            "APP_SECRET": s.app_secret.get_secret_value(),
            "USER_ACCESS_TOKEN": TOKEN_PLACEHOLDER,
        }

    async def start(self, log_path: Path) -> Child:
        """Spawn a child and wait until it answers a ping; raise StartFailed otherwise."""
        child_id = secrets.token_hex(6)
        home = self._children_dir / child_id
        home.mkdir(parents=True, mode=0o700)
        port = free_port()
        child_log = ChildLog(log_path)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(port),
                cwd=home,
                env=self.environment(home),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(home, ignore_errors=True)
            raise StartFailed(f"cannot run {self._settings.node_path}: {exc.strerror}") from None

        child = Child(child_id=child_id, process=process, port=port, home=home, log=child_log)
        if self._settings.child_transport == "sse":
            child.channels = ChannelSet(self.http, child.base_url)
        assert process.stdout is not None and process.stderr is not None
        child.drains = [
            asyncio.create_task(child_log.drain(process.stdout)),
            asyncio.create_task(child_log.drain(process.stderr)),
        ]
        try:
            await self._wait_ready(child)
        except BaseException:  # StartFailed, or the start cancelled (the pool closing)
            await self.stop(child)
            raise
        log.info("child %s started pid=%d port=%d", child_id, process.pid, port)
        return child

    async def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self._settings.start_timeout
        while time.monotonic() < deadline:
            if not child.alive:
                raise StartFailed(
                    f"lark-mcp exited with code {child.process.returncode} while starting; "
                    f"see {child.log.path.name}"
                )
            if await self.probe(child, timeout=1.0):
                # The probe carries no token. Before any request that does, make sure it is
                # the child that listens there: a local process that took the port first
                # must never receive a user's token.
                if not await asyncio.to_thread(_listens_on, child.pid, child.port):
                    raise StartFailed(f"port {child.port} was taken by another process")
                await self._warm_up(child)
                return
            await asyncio.sleep(0.05)
        raise StartFailed(f"lark-mcp was not ready within {self._settings.start_timeout:g}s")

    async def _warm_up(self, child: Child) -> None:
        """One tools/list (which reaches no one) so the first real call finds V8 warm."""
        try:
            await self.call(child, TOOLS_LIST, None, self._settings.start_timeout)
        except (ChannelClosed, TimeoutError, ValueError) as exc:
            log.debug("warm-up of child %s failed: %s", child.child_id, type(exc).__name__)

    async def probe(self, child: Child, timeout: float) -> bool:
        """True when the child answers an MCP ping."""
        try:
            await self.call(child, PING, None, timeout)
        except (ChannelClosed, TimeoutError, ValueError):
            return False
        return True

    async def call(
        self, child: Child, message: dict[str, Any], token: str | None, timeout: float
    ) -> dict[str, Any]:
        """One JSON-RPC request to the child, its reply back; the token rides as Bearer.

        Raises ChannelClosed when the child cannot be reached, TimeoutError when it does not
        answer in time, ValueError when its answer is not JSON-RPC.
        """
        if child.channels is not None:
            return await child.channels.request(token, message, timeout)
        headers = dict(MCP_HEADERS)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with (
                asyncio.timeout(timeout),
                self.http.post(child.url, data=json.dumps(message).encode(), headers=headers) as r,
            ):
                body = await r.text()
                status, content_type = r.status, r.content_type
        except aiohttp.ClientConnectorError as exc:
            raise ChannelClosed(type(exc).__name__, delivered=False) from None
        except aiohttp.ClientError as exc:
            raise ChannelClosed(type(exc).__name__) from None
        if 400 <= status < 500:
            return refused_reply(message, status)
        if status != 200:
            raise ChannelClosed(f"child answered HTTP {status}", delivered=False)
        return parse_streamable_reply(body, content_type)

    async def stop(self, child: Child) -> None:
        """SIGTERM the child's process group, SIGKILL after the grace period, free its files."""
        if child.channels is not None:
            await child.channels.close()
        if child.alive:
            _signal_group(child.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), self._settings.stop_grace)
            except TimeoutError:
                _signal_group(child.pid, signal.SIGKILL)
                await child.process.wait()
        else:
            # The leader is gone; anything it left in its group goes too.
            _signal_group(child.pid, signal.SIGKILL)
        for task in child.drains:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 1.0)
        child.log.close()
        shutil.rmtree(child.home, ignore_errors=True)
        log.info("child %s stopped pid=%d", child.child_id, child.pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def parse_streamable_reply(text: str, content_type: str) -> dict[str, Any]:
    """lark-mcp's streamable mode answers one request with one SSE ``message`` event."""
    if content_type == "text/event-stream":
        text = "\n".join(
            line[5:].lstrip() for line in text.splitlines() if line.startswith("data:")
        )
    reply = json.loads(text)
    if not isinstance(reply, dict):
        raise ValueError("unexpected answer")
    return reply


def _listens_on(pid: int, port: int) -> bool:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections
    )


def process_gone(pid: int) -> bool:
    """True when the process has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def kill_group(pid: int) -> None:
    _signal_group(pid, signal.SIGKILL)


def stop_orphan(pid: int, node_marker: str) -> bool:
    """Kill a child a previous gateway run left behind, if that pid is still a lark-mcp."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not any(node_marker.encode() in part for part in cmdline):
        return False
    _signal_group(pid, signal.SIGKILL)
    return True
