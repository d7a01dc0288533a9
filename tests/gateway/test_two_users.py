"""Two people log in through Feishu and use their own lark-mcp at the same time."""

from __future__ import annotations

import anyio
import pytest

from larkgate.emulator import RunningEmulator
from support import (
    GatewayServer,
    login_link_in,
    play_browser_login,
    sse_mcp_client,
    streamable_client,
    tool_text,
)

pytestmark = pytest.mark.anyio

CHAT_LIST = "im_v1_chat_list"


async def test_two_users_on_both_transports_reach_feishu_as_themselves(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice = emulator.state.config.find_user("alice")
    bob = emulator.state.config.find_user("bob")
    assert alice and bob

    async with (
        sse_mcp_client(gateway.url) as over_sse,
        streamable_client(gateway.url) as over_http,
    ):
        page_a = play_browser_login(login_link_in(over_sse.instructions), "alice")
        page_b = play_browser_login(login_link_in(over_http.instructions), "bob")
        assert page_a.status_code == 200 and "Alice" in page_a.text
        assert page_b.status_code == 200 and "Bob" in page_b.text
        emulator.state.calls.clear()

        results: dict[str, str] = {}

        async def call(name: str, client: object, rounds: int) -> None:
            for _ in range(rounds):
                result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})  # type: ignore[attr-defined]
                assert not result.is_error, tool_text(result)
                results[name] = tool_text(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "alice", over_sse, 5)
            tg.start_soon(call, "bob", over_http, 5)

    assert "Alice" in results["alice"] and "Bob" not in results["alice"]
    assert "Bob" in results["bob"] and "Alice" not in results["bob"]
    chat_calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert len(chat_calls) == 10
    assert {c.open_id for c in chat_calls} == {alice.open_id, bob.open_id}
    assert all(c.token_kind == "user" for c in chat_calls)
    assert sum(c.open_id == alice.open_id for c in chat_calls) == 5


async def test_without_login_tools_are_listed_and_calls_answer_with_the_login_link(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    async with streamable_client(gateway.url) as client:
        link = login_link_in(client.instructions)
        tools = await client.list_tools()
        assert CHAT_LIST in {t.name for t in tools.tools}
        emulator.state.calls.clear()

        result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})

    assert result.is_error
    assert link in tool_text(result)
    assert "login_required" in tool_text(result)
    assert not emulator.state.calls.matching("/open-apis/")
