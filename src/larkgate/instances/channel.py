"""One long-lived SSE connection to a lark-mcp child, carrying many requests.

In its SSE mode lark-mcp keeps one MCP server per connection and takes the user token from the
``Authorization`` header of the ``GET /sse`` that opened it; its streamable mode builds a fresh
server for every POST, which costs the child about twice the CPU per call. So the gateway keeps
one channel per child and token: requests go out as ``POST /messages`` with ids the channel
owns (two clients may both use id 1), and replies come back on the stream, matched by id.
A new token opens a new channel; the old one closes once its last request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

_ids = itertools.count(1)
# A reply larger than this closes the channel rather than growing the gateway without bound.
MAX_EVENT_BYTES = 64 * 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


def child_session() -> aiohttp.ClientSession:
    """The HTTP client for the hop to children (loopback only, no proxies, no cookies).

    aiohttp rather than httpx here: measured on a lark-mcp child, a message on the hop costs
    the gateway about 0.3 ms of CPU with aiohttp against 0.9-1.0 ms with httpx, and this hop
    is on every tool call. Idle connections close after 2 s, before Node's 5 s keep-alive can
    close them under a request.
    """
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=NO_TIMEOUT,
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class ChannelClosed(Exception):
    """The child could not be reached. ``delivered`` is False when the request surely never
    reached it, so sending it again cannot repeat a side effect."""

    def __init__(self, message: str, *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


class ChildChannel:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self._http = http
        self._base_url = base_url
        self.token = token
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._messages_url = ""
        self._reader: asyncio.Task[None] | None = None
        self._response: aiohttp.ClientResponse | None = None
        self.closed = False
        self._retiring = False
        self._closing: asyncio.Future[None] | None = None

    async def open(self, timeout: float) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with asyncio.timeout(timeout):
                self._response = await self._http.get(f"{self._base_url}/sse", headers=headers)
                if self._response.status != 200:
                    raise ChannelClosed(
                        f"child answered HTTP {self._response.status} to /sse", delivered=False
                    )
                events = _events(self._response.content)
                name, data = await anext(events)
            if name != "endpoint":
                raise ChannelClosed(
                    "child stream did not start with its endpoint", delivered=False
                )
        except (aiohttp.ClientError, TimeoutError, StopAsyncIteration, ValueError) as exc:
            self._close_stream()
            raise ChannelClosed(type(exc).__name__, delivered=False) from None
        except BaseException:  # ChannelClosed, or the caller's deadline cancelling the open
            self._close_stream()
            raise
        self._messages_url = f"{self._base_url}{data}"
        self._reader = asyncio.create_task(self._read(events))

    async def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one JSON-RPC request and wait for its reply, with the caller's id restored."""
        if self.closed:
            raise ChannelClosed("channel closed", delivered=False)
        wire_id = f"lg-{next(_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[wire_id] = future
        body = json.dumps({**message, "id": wire_id}).encode()
        try:
            async with asyncio.timeout(timeout):
                status = await self._post(body)
                if 400 <= status < 500:
                    return refused_reply(message, status)
                if status not in (200, 202):
                    raise ChannelClosed(
                        f"child answered HTTP {status} to a message", delivered=False
                    )
                reply = await future
        finally:
            self._pending.pop(wire_id, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen here; the caller got its own error above
            if self._retiring and not self._pending:
                self._closing = asyncio.ensure_future(self.close())
        reply["id"] = message.get("id")
        return reply

    async def _post(self, body: bytes) -> int:
        try:
            async with self._http.post(
                self._messages_url, data=body, headers=JSON_HEADERS
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientConnectionError as exc:
            # lark-mcp hands a message to its server and writes the 202 in one turn of its
            # event loop, before any request of its own (to Feishu) can leave; so a POST that
            # got no answer at all started nothing: sending it again repeats nothing.
            raise ChannelClosed(type(exc).__name__, delivered=False) from None
        except aiohttp.ClientError as exc:
            raise ChannelClosed(type(exc).__name__) from None

    def retire(self) -> None:
        """Close once the requests already sent are answered."""
        self._retiring = True
        if not self._pending:
            self._closing = asyncio.ensure_future(self.close())

    async def _read(self, events: AsyncIterator[tuple[str, str]]) -> None:
        try:
            async for name, data in events:
                if name != "message":
                    continue
                try:
                    reply = json.loads(data)
                except ValueError:
                    log.warning("child sent an unreadable message; dropped")
                    continue
                future = (
                    self._pending.get(str(reply.get("id"))) if isinstance(reply, dict) else None
                )
                if future is not None and not future.done():
                    future.set_result(reply)
        except (aiohttp.ClientError, ValueError, asyncio.CancelledError) as exc:
            if isinstance(exc, ValueError):
                log.warning("child stream broke its framing (%s); channel closed", exc)
        finally:
            self.closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChannelClosed("child stream ended"))

    async def close(self) -> None:
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._close_stream()

    def _close_stream(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            response.close()


def refused_reply(message: dict[str, Any], status: int) -> dict[str, Any]:
    """lark-mcp turned the message down before running it: the client's error, not ours."""
    return {
        "jsonrpc": "2.0",
        "id": message.get("id"),
        "error": {
            "code": -32600,
            "message": f"lark-mcp refused the request (HTTP {status})",
            "data": {"code": "request_refused"},
        },
    }


async def _events(stream: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data) pairs, read in chunks of any size."""
    name, data = "message", list[str]()
    partial: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        if b"\n" not in chunk:
            partial.append(chunk)
            size += len(chunk)
            if size > MAX_EVENT_BYTES:
                raise ValueError(f"a line over {MAX_EVENT_BYTES} bytes")
            continue
        *lines, rest = (b"".join(partial) + chunk).split(b"\n")
        partial, size = [rest], len(rest)
        for raw in lines:
            line = raw.removesuffix(b"\r").decode()
            if not line:
                if data:
                    yield name, "\n".join(data)
                name, data = "message", list[str]()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


class ChannelSet:
    """A child's open channels: the token-less one (probes, discovery) and the user's current."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self._http = http
        self._base_url = base_url
        self._channels: dict[str | None, ChildChannel] = {}
        self._lock = asyncio.Lock()

    async def get(self, token: str | None, timeout: float) -> ChildChannel:
        channel = self._channels.get(token)
        if channel is not None and not channel.closed:
            return channel
        async with self._lock:
            channel = self._channels.get(token)
            if channel is not None and not channel.closed:
                return channel
            channel = ChildChannel(self._http, self._base_url, token)
            await channel.open(timeout)
            log.debug("opened a channel to %s (%s)", self._base_url, "user" if token else "bare")
            if token is not None:
                # A user has one current token; older channels finish what they carry.
                for old_token, old in list(self._channels.items()):
                    if old_token is not None:
                        old.retire()
                        del self._channels[old_token]
            self._channels[token] = channel
            return channel

    async def request(
        self, token: str | None, message: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Send on the token's channel; a channel found dead is replaced once.

        One deadline covers it all: waiting while another caller opens the channel, opening
        it, and the answer. Without it, callers queued behind an open that hangs (a stopped
        child) would each wait their turn and then a timeout of their own.
        """
        async with asyncio.timeout(timeout):
            for attempt in (1, 2):
                channel = await self.get(token, timeout)
                try:
                    return await channel.request(message, timeout)
                except ChannelClosed as exc:
                    if attempt == 2 or exc.delivered:
                        raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
