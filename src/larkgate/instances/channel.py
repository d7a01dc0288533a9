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

import httpx

log = logging.getLogger(__name__)

_ids = itertools.count(1)


class ChannelClosed(Exception):
    """The child could not be reached. ``delivered`` is False when the request surely never
    reached it, so sending it again cannot repeat a side effect."""

    def __init__(self, message: str, *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


class ChildChannel:
    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str | None) -> None:
        self._http = http
        self._base_url = base_url
        self.token = token
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._messages_url = ""
        self._reader: asyncio.Task[None] | None = None
        self._stream: contextlib.AbstractAsyncContextManager[httpx.Response] | None = None
        self.closed = False
        self._retiring = False
        self._closing: asyncio.Future[None] | None = None

    async def open(self, timeout: float) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self._stream = self._http.stream(
            "GET",
            f"{self._base_url}/sse",
            headers=headers,
            timeout=httpx.Timeout(timeout, read=None),
        )
        try:
            response = await self._stream.__aenter__()
            if response.status_code != 200:
                raise ChannelClosed(
                    f"child answered HTTP {response.status_code} to /sse", delivered=False
                )
            events = _events(response.aiter_lines())
            name, data = await asyncio.wait_for(anext(events), timeout)
            if name != "endpoint":
                raise ChannelClosed(
                    "child stream did not start with its endpoint", delivered=False
                )
        except (httpx.HTTPError, TimeoutError, StopAsyncIteration) as exc:
            await self._close_stream()
            raise ChannelClosed(type(exc).__name__, delivered=False) from None
        except ChannelClosed:
            await self._close_stream()
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
        try:
            response = await self._http.post(
                self._messages_url,
                content=json.dumps({**message, "id": wire_id}).encode(),
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
            if 400 <= response.status_code < 500:
                return refused_reply(message, response)
            if response.status_code not in (200, 202):
                raise ChannelClosed(
                    f"child answered HTTP {response.status_code} to a message", delivered=False
                )
            reply = await asyncio.wait_for(future, timeout)
        except httpx.TransportError as exc:
            if not sent_at_most(exc):
                raise ChannelClosed(type(exc).__name__) from None
            # lark-mcp answers 202 before it starts the work a message asks for, so a POST
            # that got no answer at all started nothing: sending it again repeats nothing.
            raise ChannelClosed(type(exc).__name__, delivered=False) from None
        except httpx.HTTPError as exc:
            raise ChannelClosed(type(exc).__name__) from None
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
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
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
        await self._close_stream()

    async def _close_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await stream.__aexit__(None, None, None)


def refused_reply(message: dict[str, Any], response: httpx.Response) -> dict[str, Any]:
    """lark-mcp turned the message down before running it: the client's error, not ours."""
    return {
        "jsonrpc": "2.0",
        "id": message.get("id"),
        "error": {
            "code": -32600,
            "message": f"lark-mcp refused the request (HTTP {response.status_code})",
            "data": {"code": "request_refused"},
        },
    }


def sent_at_most(exc: httpx.TransportError) -> bool:
    """True for failures that leave a POST unanswered (the connection broke or never opened)."""
    return isinstance(
        exc, httpx.ConnectError | httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError
    )


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data) pairs."""
    name, data = "message", list[str]()
    async for line in lines:
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

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
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
        """Send on the token's channel; a channel found dead is replaced once."""
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
