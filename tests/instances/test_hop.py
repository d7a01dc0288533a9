"""The hop to real lark-mcp children under load and faults: big replies, many calls, ids that
clash, children killed or stopped mid-reply, and a hop that cannot even open.

Big replies come from the emulator's documents (``docx_v1_document_rawContent``), the tool a
person uses to read a long Feishu document.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import psutil
import pytest

from larkgate.emulator import RunningEmulator
from support import (
    GatewayServer,
    lark_mcp_under,
    login_link_in,
    play_browser_login,
    streamable_client,
    tool_text,
)

pytestmark = pytest.mark.anyio

READ_DOC = "docx_v1_document_rawContent"
CHAT_LIST = "im_v1_chat_list"
CHAT_ARGS = {"params": {"page_size": 5}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}},
}
CHILD_TIMEOUT = 8.0
# 5.6 MB of UTF-8, a 5.8 MB reply from lark-mcp; the gateway's JSON escapes make it 10 MB.
BIG_DOCUMENT = "".join(f"第{n}段 飞书文档 🚀🎉 café line {n}\n" for n in range(110_000))


def _read_doc(document_id: str, request_id: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": READ_DOC, "arguments": {"path": {"document_id": document_id}}},
    }


def _document_in(reply: dict[str, Any]) -> str:
    """The document text inside a raw JSON-RPC reply to a READ_DOC call."""
    result = reply["result"]
    assert not result.get("isError"), reply
    content: str = json.loads(result["content"][0]["text"])["content"]
    return content


def _open_id(emulator: RunningEmulator, name: str) -> str:
    user = emulator.state.config.find_user(name)
    assert user is not None
    return user.open_id


def _child_pid(gateway: GatewayServer, emulator: RunningEmulator, name: str) -> int:
    child = gateway.gateway.pool.child_of(_open_id(emulator, name))
    assert child is not None and child.alive
    return child.pid


def _error_code(exc: BaseException) -> object:
    """The gateway's stable code of a JSON-RPC error the MCP client raised."""
    data = getattr(exc, "data", None)
    return data.get("code") if isinstance(data, dict) else None


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


class RawSse:
    """An HTTP+SSE session read line by line: the MCP SDK's SSE client stops at 1 MiB events."""

    def __init__(self, http: httpx.AsyncClient, lines: AsyncIterator[str], session_id: str):
        self._http = http
        self._lines = lines
        self.session_id = session_id

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        posted = await self._http.post(f"/messages?sessionId={self.session_id}", json=message)
        assert posted.status_code == 202, posted.text
        async for line in self._lines:
            if line.startswith("data: "):
                reply: dict[str, Any] = json.loads(line.removeprefix("data: "))
                if reply.get("id") == message["id"]:
                    return reply
        raise AssertionError("the event stream ended before the reply")

    async def login_link(self) -> str:
        """The login link the gateway gives this session's client in ``initialize``."""
        reply = await self.call({**INIT, "id": "login-link"})
        return login_link_in(reply["result"]["instructions"])


@asynccontextmanager
async def raw_sse(gateway_url: str) -> AsyncIterator[RawSse]:
    timeout = httpx.Timeout(60, read=None)
    async with (
        httpx.AsyncClient(base_url=gateway_url, timeout=timeout, trust_env=False) as http,
        http.stream("GET", "/sse") as stream,
    ):
        lines = stream.aiter_lines()
        async for line in lines:
            if line.startswith("data: /messages"):
                yield RawSse(http, lines, line.split("sessionId=", 1)[1])
                return
        raise AssertionError("the event stream never named its endpoint")


@pytest.fixture
def reply_in_reverse(emulator: RunningEmulator) -> Iterator[Callable[[int], None]]:
    """Make the next ``n`` OpenAPI calls answer in the reverse order of their arrival."""
    faults = emulator.state.faults
    lock = threading.Lock()
    delays: list[float] = []

    def hang_for(endpoint: Any) -> float:
        if endpoint != "openapi":
            return 0.0
        with lock:
            return delays.pop(0) if delays else 0.0

    def arm(n: int) -> None:
        delays[:] = [0.03 * (n - k) for k in range(n)]

    faults.hang_for = hang_for  # type: ignore[method-assign]
    yield arm
    del faults.hang_for


async def test_replies_of_several_megabytes_arrive_intact_for_two_users_at_once(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway(child_timeout=60.0)
    emulator.state.put_document("doxcnBig", BIG_DOCUMENT)
    received: dict[str, str] = {}
    small_calls: list[str] = []

    async with (
        streamable_client(gateway.url) as alice,
        raw_sse(gateway.url) as bob,
        streamable_client(gateway.url) as carol,
    ):
        play_browser_login(login_link_in(alice.instructions), "alice")
        play_browser_login(await bob.login_link(), "bob")
        play_browser_login(login_link_in(carol.instructions), "carol")

        async def alice_reads() -> None:
            result = await alice.call_tool(READ_DOC, {"path": {"document_id": "doxcnBig"}})
            assert not result.is_error, tool_text(result)[:300]
            received["alice"] = json.loads(tool_text(result))["content"]

        async def bob_reads() -> None:
            received["bob"] = _document_in(await bob.call(_read_doc("doxcnBig", 7)))

        async def carol_chats() -> None:
            for _ in range(5):
                result = await carol.call_tool(CHAT_LIST, CHAT_ARGS)
                assert not result.is_error, tool_text(result)
                small_calls.append(tool_text(result))

        async with anyio.create_task_group() as tg:
            tg.start_soon(alice_reads)
            tg.start_soon(bob_reads)
            tg.start_soon(carol_chats)

    assert received["alice"] == BIG_DOCUMENT
    assert received["bob"] == BIG_DOCUMENT
    assert len(small_calls) == 5 and all("Carol's team chat" in t for t in small_calls)


async def test_fifty_calls_in_flight_on_one_channel_each_get_their_own_reply(
    gateway: GatewayServer,
    emulator: RunningEmulator,
    reply_in_reverse: Callable[[int], None],
) -> None:
    calls = 50
    for n in range(calls):
        emulator.state.put_document(f"doxcn{n:03d}", f"document {n}: " + "字" * 100 * n)
    answers: dict[int, str] = {}

    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")

        async def read(n: int) -> None:
            result = await client.call_tool(READ_DOC, {"path": {"document_id": f"doxcn{n:03d}"}})
            answers[n] = json.loads(tool_text(result))["content"]

        reply_in_reverse(calls)
        async with anyio.create_task_group() as tg:
            for n in range(calls):
                tg.start_soon(read, n)

    assert answers == {n: f"document {n}: " + "字" * 100 * n for n in range(calls)}


async def test_two_sessions_of_one_user_both_using_id_1_each_get_their_own_reply(
    gateway: GatewayServer,
    emulator: RunningEmulator,
    reply_in_reverse: Callable[[int], None],
) -> None:
    emulator.state.put_document("doxcnFirst", "the first session's document")
    emulator.state.put_document("doxcnSecond", "the second session's document")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, trust_env=False) as http:
        sessions = []
        for _ in range(2):
            init = await http.post("/mcp", json=INIT, headers=ACCEPT)
            play_browser_login(login_link_in(init.json()["result"]["instructions"]), "alice")
            sessions.append(init.headers["mcp-session-id"])
        replies: dict[str, dict[str, Any]] = {}

        async def read(session_id: str, document_id: str) -> None:
            headers = {**ACCEPT, "Mcp-Session-Id": session_id}
            posted = await http.post("/mcp", json=_read_doc(document_id, 1), headers=headers)
            replies[document_id] = posted.json()

        reply_in_reverse(2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, sessions[0], "doxcnFirst")
            tg.start_soon(read, sessions[1], "doxcnSecond")

    assert replies["doxcnFirst"]["id"] == replies["doxcnSecond"]["id"] == 1
    assert _document_in(replies["doxcnFirst"]) == "the first session's document"
    assert _document_in(replies["doxcnSecond"]) == "the second session's document"


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
async def test_a_child_failing_while_its_big_reply_streams_answers_that_call_clearly(
    start_gateway: Callable[..., GatewayServer],
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
    fault: signal.Signals,
) -> None:
    """Killed: the stream breaks mid-reply. Stopped: the reply stalls until the health probe
    gives up on the child and kills it. Either way: a stable error code, then a new child."""
    gateway = start_gateway(child_timeout=CHILD_TIMEOUT, health_interval=0.5)
    emulator.state.put_document("doxcnBig", BIG_DOCUMENT * 3)
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        assert not (await client.call_tool(CHAT_LIST, CHAT_ARGS)).is_error
        victim = _child_pid(gateway, emulator, "alice")
        emulator.state.calls.clear()
        outcome: list[BaseException] = []

        async def read_big() -> None:
            try:
                await client.call_tool(READ_DOC, {"path": {"document_id": "doxcnBig"}})
            except Exception as exc:  # the MCP client raises the JSON-RPC error
                outcome.append(exc)

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_big)
                    # Feishu has answered: lark-mcp is now making and sending a 17 MB reply.
                    while not emulator.state.calls.matching("/open-apis/docx/"):
                        await anyio.sleep(0.005)
                    os.kill(victim, fault)
        finally:
            if fault == signal.SIGSTOP and psutil.pid_exists(victim):
                os.kill(victim, signal.SIGKILL)

        assert len(outcome) == 1, "the call did not fail"
        assert _error_code(outcome[0]) == "instance_unavailable", repr(outcome[0])
        result = await client.call_tool(CHAT_LIST, CHAT_ARGS)
        assert not result.is_error and "Alice" in tool_text(result)
    assert _child_pid(gateway, emulator, "alice") != victim
    assert _tracebacks(caplog) == []


async def test_calls_waiting_on_a_hung_childs_channel_each_end_within_the_child_timeout(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    """Eight calls of a user whose first call finds a child that accepts connections but
    never answers (stopped, and no health probe soon enough). They all queued for the one
    channel being opened; each used to wait for every call ahead of it to time out in turn
    (the first answered after 9 s, the last after 16 s, with a 1 s child timeout)."""
    gateway = start_gateway(child_timeout=1.0, health_interval=600.0, warm_spares=1)
    pool = gateway.gateway.pool
    with anyio.fail_after(30):
        while pool.counts().spares < 1:
            await anyio.sleep(0.05)
    spare = pool._spares[0].pid
    errors: list[BaseException] = []
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        os.kill(spare, signal.SIGSTOP)
        try:

            async def call() -> None:
                try:
                    await client.call_tool(CHAT_LIST, CHAT_ARGS)
                except Exception as exc:  # the MCP client raises the JSON-RPC error
                    errors.append(exc)

            # Generous next to the 1 s the calls are allowed, short of the old queue's 9 s.
            with anyio.fail_after(6):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(call)
        finally:
            os.kill(spare, signal.SIGKILL)
    assert [_error_code(e) for e in errors] == ["instance_unavailable"] * 8, errors


async def test_a_shutdown_with_calls_in_flight_answers_them_with_a_stable_code(
    start_gateway: Callable[..., GatewayServer],
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls still waiting on Feishu when uvicorn's shutdown grace (5 s in the tests) runs
    out used to be cancelled: a bare 500 and a traceback each, and an open event stream held
    the shutdown for the whole grace and then left a traceback of its own."""
    gateway = start_gateway(child_timeout=60.0)
    emulator.state.put_document("doxcnSlow", "slow")
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=60, trust_env=False) as http,
        raw_sse(gateway.url) as bob,
    ):
        init = await http.post("/mcp", json=INIT, headers=ACCEPT)
        play_browser_login(login_link_in(init.json()["result"]["instructions"]), "alice")
        play_browser_login(await bob.login_link(), "bob")
        headers = {**ACCEPT, "Mcp-Session-Id": init.headers["mcp-session-id"]}
        emulator.state.faults.hang(15.0, "openapi")
        answers: dict[str, Any] = {}

        async def alice_reads() -> None:
            posted = await http.post("/mcp", json=_read_doc("doxcnSlow", 3), headers=headers)
            answers["alice"] = (posted.status_code, posted.text)

        async def bob_reads() -> None:
            try:
                answers["bob"] = await bob.call(_read_doc("doxcnSlow", 4))
            except (httpx.HTTPError, AssertionError) as exc:
                answers["bob"] = exc

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(alice_reads)
                tg.start_soon(bob_reads)
                while not _in_flight(gateway, 2):
                    await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(gateway.stop)

    status, text = answers["alice"]
    assert status == 503, text
    assert json.loads(text)["error"]["data"]["code"] == "instance_unavailable"
    assert isinstance(answers["bob"], Exception), "bob's stream outlived the gateway"
    assert _tracebacks(caplog) == []
    assert lark_mcp_under(str(gateway.settings.data_dir)) == []


def _in_flight(gateway: GatewayServer, calls: int) -> bool:
    """True once the users' children carry this many calls between them."""
    return sum(c.in_flight for c in gateway.gateway.pool.children()) >= calls
