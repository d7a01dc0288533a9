"""Children that hang, keep crashing, or fail to start, with real lark-mcp processes."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from larkgate.emulator import RunningEmulator
from support import GatewayServer, login_link_in, play_browser_login, streamable_client, tool_text

pytestmark = pytest.mark.anyio

CHAT_LIST = "im_v1_chat_list"
ARGS = {"params": {"page_size": 5}}


def _alice_child_pid(gateway: GatewayServer, emulator: RunningEmulator) -> int | None:
    alice = emulator.state.config.find_user("alice")
    assert alice is not None
    child = gateway.gateway.pool.child_of(alice.open_id)
    return child.pid if child is not None and child.alive else None


async def test_a_hung_child_is_found_by_the_probe_and_replaced(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway(health_interval=0.3)
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        assert not (await client.call_tool(CHAT_LIST, ARGS)).is_error
        hung = _alice_child_pid(gateway, emulator)
        assert hung is not None

        os.kill(hung, signal.SIGSTOP)
        with anyio.fail_after(30):
            while _alice_child_pid(gateway, emulator) in (None, hung):
                await anyio.sleep(0.1)

        result = await client.call_tool(CHAT_LIST, ARGS)
        assert not result.is_error and "Alice" in tool_text(result)


async def test_a_child_that_keeps_crashing_is_paused_then_tried_again(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway(restart_limit=3, restart_window=12.0, restart_backoff=0.05)
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        alice = emulator.state.config.find_user("alice")
        assert alice is not None
        pool = gateway.gateway.pool
        result = await client.call_tool(CHAT_LIST, ARGS)
        assert not result.is_error, tool_text(result)
        for _ in range(3):
            # The pool restarts a crashed child by itself; kill each new one as it comes.
            with anyio.fail_after(30):
                while (pid := _alice_child_pid(gateway, emulator)) is None:
                    await anyio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(30):
                while _alice_child_pid(gateway, emulator) in (None, pid):
                    if pool.is_failed(alice.open_id):
                        break
                    await anyio.sleep(0.05)

        assert pool.is_failed(alice.open_id)
        assert pool.counts().failed == 1
        with pytest.raises(Exception, match="kept crashing"):
            await client.call_tool(CHAT_LIST, ARGS)

        with anyio.fail_after(30):
            while pool.is_failed(alice.open_id):
                await anyio.sleep(0.1)
        result = await client.call_tool(CHAT_LIST, ARGS)
        assert not result.is_error and "Alice" in tool_text(result)


async def test_a_child_that_fails_to_start_is_retried_on_the_next_call(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator, tmp_path: Path
) -> None:
    broken = tmp_path / "node-broken"
    wrapper = tmp_path / "node"
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e "{broken}" ]; then echo "cannot start" >&2; exit 3; fi\n'
        'exec node "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    gateway = start_gateway(node_path=str(wrapper))
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        broken.touch()
        with pytest.raises(Exception, match="not available"):
            await client.call_tool(CHAT_LIST, ARGS)

        broken.unlink()
        result = await client.call_tool(CHAT_LIST, ARGS)
        assert not result.is_error and "Alice" in tool_text(result)
