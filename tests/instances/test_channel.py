"""The hop's SSE channel against a stand-in child that controls how its bytes are cut.

A real lark-mcp child writes each reply in one piece and leaves the cuts to the network; the
stand-in here speaks the same protocol (``GET /sse`` names the message endpoint, a ``POST
/messages`` is accepted with 202 and answered on the stream) but writes every reply in pieces
cut where a test asks, and ends its stream when told to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from larkgate.instances.channel import ChannelClosed, ChannelSet, child_session

pytestmark = pytest.mark.anyio

TOKEN = "u-stand-in"  # a made-up token for a stand-in child
TIMEOUT = 10.0


class StandInChild:
    """lark-mcp's SSE endpoints on loopback; ``piece_size`` says where each reply is cut."""

    def __init__(self) -> None:
        self.piece_size = 1 << 20
        self.answer = True
        self.streams: list[web.StreamResponse] = []
        self.stream_ended = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/sse", self._open_stream)
        app.router.add_post("/messages", self._message)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def end_stream(self) -> None:
        """Close the newest event stream the way a child that drops it would."""
        await self.streams[-1].write_eof()
        self.stream_ended.set()

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b"event: endpoint\ndata: /messages?sessionId=s1\n\n")
        self.streams.append(stream)
        ended = asyncio.Event()
        self.stream_ended = ended
        await ended.wait()
        return stream

    async def _message(self, request: web.Request) -> web.Response:
        message = await request.json()
        if self.answer:
            asyncio.get_running_loop().create_task(self._reply(message))
        return web.Response(status=202, text="Accepted")

    async def _reply(self, message: dict[str, Any]) -> None:
        text = message["params"]["arguments"]["text"]
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [text]}}
        event = f"event: message\r\ndata: {json.dumps(reply, ensure_ascii=False)}\r\n\r\n"
        wire = event.encode()
        for start in range(0, len(wire), self.piece_size):
            # Each piece in a write and a read of its own: the pause lets it leave alone.
            await self.streams[-1].write(wire[start : start + self.piece_size])
            await asyncio.sleep(0.002)


@pytest.fixture
async def child() -> AsyncIterator[StandInChild]:
    stand_in = StandInChild()
    await stand_in.start()
    yield stand_in
    stand_in.stream_ended.set()
    await stand_in.stop()


def _call(text: str, request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}},
    }


async def test_a_reply_cut_inside_multibyte_characters_and_line_ends_arrives_intact(
    child: StandInChild,
) -> None:
    # Chinese (3 bytes a character), emoji (4) and accents (2): cut every 1, 2, 3, 5 or 7
    # bytes, pieces end inside characters, and with CRLF line ends between CR and LF.
    text = "飞书文档 🚀🎉 café, 第二行 👩‍💻 ok"
    async with child_session() as http:
        channels = ChannelSet(http, child.url)
        for request_id, piece_size in enumerate((1, 2, 3, 5, 7)):
            child.piece_size = piece_size
            reply = await channels.request(TOKEN, _call(text, request_id), TIMEOUT)
            assert reply == {"jsonrpc": "2.0", "id": request_id, "result": {"content": [text]}}
        await channels.close()


async def test_a_child_ending_its_stream_fails_the_waiting_call_at_once_and_the_next_reopens(
    child: StandInChild,
) -> None:
    async with child_session() as http:
        channels = ChannelSet(http, child.url)
        assert (await channels.request(TOKEN, _call("first"), TIMEOUT))["result"]
        child.answer = False
        waiting = asyncio.ensure_future(channels.request(TOKEN, _call("lost"), TIMEOUT))
        await asyncio.sleep(0.2)

        await child.end_stream()
        with pytest.raises(ChannelClosed, match="child stream ended"):
            # Well inside the call's own timeout: the end of the stream answers it.
            await asyncio.wait_for(waiting, TIMEOUT / 2)

        child.answer = True
        reply = await channels.request(TOKEN, _call("again"), TIMEOUT)
        assert reply["result"] == {"content": ["again"]}
        assert len(child.streams) == 2
        await channels.close()
