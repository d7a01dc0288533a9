"""Token keeping in a running gateway, in front of real lark-mcp children and the emulator.

One gateway serves the whole module, and a few users take turns, because starting a gateway
or a child costs seconds on a small machine. Each test logs its user in afresh and asserts only
about what happens after that; time only moves forward, for Feishu and the gateway alike. A
handler on the root logger records every line of the run, for the secret scan at the end.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from larkgate.emulator import CallRecord, EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from larkgate.emulator.faults import InjectedFault
from larkgate.emulator.grants import fingerprint
from support import (
    GatewayServer,
    gateway_settings,
    login_link_in,
    play_browser_login,
    streamable_client,
    tool_text,
)

pytestmark = pytest.mark.anyio

CHAT_LIST = "im_v1_chat_list"
CHATS = "/open-apis/im/v1/chats"
ACCESS_TTL = 7200
DAY = 86400
PEOPLE = ("alice", "bob", "carol", "dave")
LINK_WITH_SCOPE = re.compile(r"https?://\S+/oauth/start\?login=[\w-]+&scope=[\w%+.:-]+")


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


@pytest.fixture(scope="module")
def log_lines() -> Iterator[LogRecorder]:
    """Every line at DEBUG, except httpx/httpcore, which `larkgate.logs.setup_logging` keeps at
    WARNING in a real run (their DEBUG lines print whole response headers)."""
    root = logging.getLogger()
    quiet = [logging.getLogger("httpx"), logging.getLogger("httpcore")]
    levels = [root.level, *(q.level for q in quiet)]
    recorder = LogRecorder()
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    yield recorder
    root.removeHandler(recorder)
    for logger, level in zip([root, *quiet], levels, strict=True):
        logger.setLevel(level)


@pytest.fixture(scope="module")
def emulator(log_lines: LogRecorder) -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorConfig(users=[make_user(p) for p in PEOPLE])) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("gateway"),
        emulator,
        refresh_backoff=0.01,
        refresh_backoff_cap=0.05,
        renewal_interval=3600.0,  # passes run when a test kicks the job
    )
    with GatewayServer(settings) as server:
        yield server


def advance(emulator: RunningEmulator, gateway: GatewayServer, seconds: float) -> None:
    emulator.state.clock.advance(seconds)
    gateway.clock.advance(seconds)


def open_id(emulator: RunningEmulator, name: str) -> str:
    user = emulator.state.config.find_user(name)
    assert user is not None
    return user.open_id


def chat_calls(emulator: RunningEmulator, user: str) -> list[CallRecord]:
    return [c for c in emulator.state.calls.matching(CHATS) if c.open_id == user]


def refreshes(emulator: RunningEmulator, user: str) -> list[CallRecord]:
    return [
        c
        for c in emulator.state.calls.matching("/open-apis/authen/v2/oauth/token")
        if c.grant_type == "refresh_token" and c.open_id == user
    ]


def live(emulator: RunningEmulator, user: str) -> dict[str, Any]:
    return emulator.state.grants.describe_user(user)


async def call(client: Client) -> Any:
    return await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})


async def test_twenty_calls_at_expiry_refresh_once_and_never_cross_users(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice, bob = open_id(emulator, "alice"), open_id(emulator, "bob")
    async with (
        streamable_client(gateway.url) as as_alice,
        streamable_client(gateway.url) as as_bob,
    ):
        play_browser_login(login_link_in(as_alice.instructions), "alice")
        await call(as_alice)  # Alice's child is running
        advance(emulator, gateway, 6000)
        play_browser_login(login_link_in(as_bob.instructions), "bob")
        await call(as_bob)
        advance(emulator, gateway, ACCESS_TTL - 6000 - 10)  # Alice's token: 10 s left
        bob_row = gateway.gateway.store.raw_user_row(bob)
        bob_token = live(emulator, bob)["access_token"]
        emulator.state.calls.clear()

        results: list[tuple[str, Any]] = []

        async def use(name: str, client: Client) -> None:
            results.append((name, await call(client)))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(use, "alice", as_alice)
                tg.start_soon(use, "bob", as_bob)

    assert all(not r.is_error for _, r in results), [tool_text(r) for _, r in results]
    assert all(("Alice" in tool_text(r)) == (n == "alice") for n, r in results)
    assert len(refreshes(emulator, alice)) == 1 and refreshes(emulator, bob) == []
    new_token = live(emulator, alice)["access_token"]
    assert {c.token_fingerprint for c in chat_calls(emulator, alice)} == {fingerprint(new_token)}
    assert {c.token_fingerprint for c in chat_calls(emulator, bob)} == {fingerprint(bob_token)}
    assert len(chat_calls(emulator, alice)) == len(chat_calls(emulator, bob)) == 20
    assert gateway.gateway.store.raw_user_row(bob) == bob_row
    stored = gateway.gateway.store.load_tokens(alice)
    assert stored is not None and stored[0].refresh_token == live(emulator, alice)["refresh_token"]


async def test_a_child_running_past_its_first_token_gets_a_fresh_one_without_restart(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice = open_id(emulator, "alice")
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        await call(client)
        child = gateway.gateway.pool.child_of(alice)
        assert child is not None
        first_token = chat_calls(emulator, alice)[-1].token_fingerprint

        advance(emulator, gateway, 3 * 3600)
        result = await call(client)

    assert not result.is_error and "Alice" in tool_text(result)
    last = chat_calls(emulator, alice)[-1]
    assert last.status == 200 and last.token_fingerprint != first_token
    assert last.token_fingerprint == fingerprint(live(emulator, alice)["access_token"])
    assert gateway.gateway.pool.child_of(alice) is child and child.alive


async def test_a_token_feishu_calls_expired_inside_a_result_is_refreshed_and_replayed_once(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    bob = open_id(emulator, "bob")
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "bob")
        await call(client)
        emulator.state.calls.clear()
        emulator.state.faults.queue("openapi", [InjectedFault(400, 99991677)])

        result = await call(client)

    assert not result.is_error and "Bob" in tool_text(result)
    assert len(refreshes(emulator, bob)) == 1
    tried = emulator.state.calls.matching(CHATS)
    assert [c.code for c in tried] == [99991677, 0]
    assert tried[-1].token_fingerprint == fingerprint(live(emulator, bob)["access_token"])


async def test_a_second_rejection_asks_for_a_login_with_the_link(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    carol = open_id(emulator, "carol")
    async with streamable_client(gateway.url) as client:
        link = login_link_in(client.instructions)
        play_browser_login(link, "carol")
        await call(client)
        emulator.state.faults.queue("openapi", [InjectedFault(400, 99991668)] * 2)

        result = await call(client)
        emulator.state.calls.clear()
        again = await call(client)
        tools = await client.list_tools()

    assert result.is_error and "login_required" in tool_text(result)
    assert link in tool_text(result)
    assert again.is_error and link in tool_text(again)
    assert "even freshly renewed" in tool_text(again)  # the reason kept in the store
    assert CHAT_LIST in {t.name for t in tools.tools}  # discovery still works meanwhile
    assert emulator.state.calls.matching("/open-apis/") == []  # told without asking Feishu
    assert gateway.gateway.store.get_user(carol).needs_login


async def test_a_missing_scope_asks_for_a_login_that_adds_it(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    dave = open_id(emulator, "dave")
    emulator.state.require_scope(CHATS, "im:chat:readonly")
    try:
        async with streamable_client(gateway.url) as client:
            play_browser_login(login_link_in(client.instructions), "dave")
            emulator.state.calls.clear()
            refused = await call(client)
            found = LINK_WITH_SCOPE.search(tool_text(refused))
            assert refused.is_error and found, tool_text(refused)

            page = play_browser_login(found.group(0), "dave")
            granted = await call(client)
    finally:
        emulator.state.clear_scope_requirements()

    assert refreshes(emulator, dave) == []  # a missing scope is no reason to refresh
    assert page.status_code == 200
    grant_scope = live(emulator, dave)["grants"][0]["scope"].split(" ")
    assert "im:chat:readonly" in grant_scope and grant_scope.count("offline_access") == 1
    assert not granted.is_error and "Dave" in tool_text(granted)


async def test_feishu_down_during_a_call_answers_try_again_not_log_in(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice = open_id(emulator, "alice")
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "alice")
        advance(emulator, gateway, ACCESS_TTL + 1)
        attempts = gateway.settings.refresh_attempts
        emulator.state.faults.queue("token", [InjectedFault(503, 20072)] * attempts)

        with pytest.raises(MCPError) as raised:
            await call(client)
        recovered = await call(client)

    assert raised.value.data["code"] == "feishu_try_again"
    assert "try again" in raised.value.message and "log in" not in raised.value.message
    assert gateway.gateway.store.get_user(alice).needs_login is None
    assert not recovered.is_error and "Alice" in tool_text(recovered)


async def test_an_idle_user_keeps_working_after_two_weeks_through_the_running_job(
    gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    bob = open_id(emulator, "bob")
    async with streamable_client(gateway.url) as client:
        play_browser_login(login_link_in(client.instructions), "bob")
        for _week in range(2):
            advance(emulator, gateway, 5.5 * DAY)
            before = len(refreshes(emulator, bob))
            kick_renewal_and_wait(gateway)
            assert len(refreshes(emulator, bob)) == before + 1
        result = await call(client)

    assert not result.is_error and "Bob" in tool_text(result)
    assert gateway.gateway.store.get_user(bob).needs_login is None


def kick_renewal_and_wait(gateway: GatewayServer) -> None:
    renewal = gateway.gateway.renewal
    previous = renewal.last_pass

    async def kick() -> None:
        renewal.kick()

    gateway.run(kick())
    deadline = time.monotonic() + 30
    while renewal.last_pass is previous:
        assert time.monotonic() < deadline, "the renewal job did not run"
        time.sleep(0.05)


async def test_no_token_appears_in_any_log_line_page_or_file(
    gateway: GatewayServer, emulator: RunningEmulator, log_lines: LogRecorder
) -> None:
    # A run of its own, in case this test runs alone: login, calls, a refresh, a refusal.
    async with streamable_client(gateway.url) as client:
        page = play_browser_login(login_link_in(client.instructions), "alice")
        await call(client)
        advance(emulator, gateway, ACCESS_TTL)
        await call(client)
        emulator.state.faults.queue("openapi", [InjectedFault(400, 99991668)] * 2)
        refused = await call(client)
    async with httpx.AsyncClient(trust_env=False) as http:
        health = (await http.get(f"{gateway.url}/health")).text
        metrics = (await http.get(f"{gateway.url}/metrics")).text
        bad_state = (await http.get(f"{gateway.url}/oauth/callback?state=x&code=y")).text

    secrets = issued_secrets(emulator) | {emulator.state.config.app_secret}
    assert len(secrets) > 5
    texts = {"health": health, "metrics": metrics, "login page": page.text}
    texts["bad state page"] = bad_state
    texts["refused result"] = tool_text(refused)
    texts |= {f"log line {n}": line for n, line in enumerate(log_lines.lines)}
    texts |= files_under(gateway.settings.data_dir)
    leaks = [(where, s[:6]) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == [], [texts[w][:300] for w, _ in leaks[:3]]
    assert len(log_lines.lines) > 50


def issued_secrets(emulator: RunningEmulator) -> set[str]:
    """Every code and token the emulator handed out in this module's run."""
    grants = emulator.state.grants
    # The emulator keeps them in private maps; a secret scan is the one reason to look there.
    return (
        set(grants._codes)
        | set(grants._access)
        | set(grants._refresh)
        | set(emulator.state.app_tokens._issued)
    )


def files_under(root: Path) -> dict[str, str]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            found[str(path)] = path.read_bytes().decode("latin-1")
    return found
