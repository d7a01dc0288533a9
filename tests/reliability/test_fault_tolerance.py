"""Faults while people are mid-call: children killed or frozen, Feishu down or hanging.

Each case ends the same way: the calls the fault hit are answered with a clear error (a stable
code, never a hang or a 500), the next call works, and every person's tokens in the store are
still the ones Feishu (the emulator) currently honours.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from larkgate.emulator import RunningEmulator
from larkgate.emulator.faults import InjectedFault
from larkgate.emulator.grants import fingerprint
from support import GatewayServer, free_port

from .reliability_kit import (
    ServeProcess,
    arrivals,
    call_chat_list,
    emulator_config,
    emulator_tokens,
    error_code,
    log_in,
    own_chat,
    report,
    result_text,
    running_gateway,
)

PEOPLE = ["alfa", "bravo"]
TOKEN_PATH = "/open-apis/authen/v2/oauth/token"
CHILD_TIMEOUT = 4.0
# Long enough for a login on a loaded machine, short enough to time refreshes out quickly.
FEISHU_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(emulator_config(len(PEOPLE))) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, emulator: RunningEmulator
) -> Iterator[GatewayServer]:
    data_dir = tmp_path_factory.mktemp("faults") / "data"
    with running_gateway(
        data_dir,
        emulator,
        health_interval=0.5,
        child_timeout=CHILD_TIMEOUT,
        feishu_timeout=FEISHU_TIMEOUT,
        refresh_attempts=2,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def sessions(gateway: GatewayServer) -> dict[str, str]:
    return {login: log_in(gateway.url, login) for login in PEOPLE}


@pytest.fixture(autouse=True)
def _fault_free_afterwards(emulator: RunningEmulator) -> Iterator[None]:
    yield
    emulator.state.faults.clear()


def _call(gateway: GatewayServer, session_id: str) -> dict[str, Any]:
    return _call_url(gateway.url, session_id)


def _answered_for(reply: dict[str, Any], login: str) -> bool:
    return "result" in reply and own_chat(login) in result_text(reply)


def _open_id(emulator: RunningEmulator, login: str) -> str:
    person = emulator.state.config.find_user(login)
    assert person is not None
    return person.open_id


def _child_pid(gateway: GatewayServer, emulator: RunningEmulator, login: str) -> int:
    child = gateway.gateway.pool.child_of(_open_id(emulator, login))
    assert child is not None and child.alive, f"{login} has no running child"
    return child.pid


def _assert_logins_kept(gateway: GatewayServer, emulator: RunningEmulator) -> None:
    """The store holds, for everyone, the tokens the emulator currently honours."""
    for login in PEOPLE:
        open_id = _open_id(emulator, login)
        loaded = gateway.gateway.store.load_tokens(open_id)
        assert loaded is not None, f"{login} lost their login"
        stored = loaded[0]
        current = emulator_tokens(emulator, open_id)
        assert current["refresh_token"] is not None, f"{login}'s refresh token is dead at Feishu"
        assert stored.refresh_token == current["refresh_token"], f"{login}: refresh token differs"
        if current["access_token"] is not None:
            assert stored.access_token == current["access_token"], f"{login}: access differs"


def _wait_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_everyone_is_served_before_any_fault(
    gateway: GatewayServer, sessions: dict[str, str]
) -> None:
    with ThreadPoolExecutor(len(sessions)) as calls:
        replies = {login: calls.submit(_call, gateway, s) for login, s in sessions.items()}
        for login, reply in replies.items():
            assert _answered_for(reply.result(300), login)


def test_a_child_killed_mid_call_answers_that_call_with_a_clear_error(
    gateway: GatewayServer, emulator: RunningEmulator, sessions: dict[str, str]
) -> None:
    assert _answered_for(_call(gateway, sessions["alfa"]), "alfa")
    victim = _child_pid(gateway, emulator, "alfa")
    emulator.state.faults.hang(3.0, "openapi")
    with arrivals(emulator, "openapi") as arrived, ThreadPoolExecutor(2) as calls:
        alfa = calls.submit(_call, gateway, sessions["alfa"])
        assert arrived.wait(60), "alfa's call never reached Feishu"
        os.kill(victim, signal.SIGKILL)
        bravo = calls.submit(_call, gateway, sessions["bravo"])
        hit, bystander = alfa.result(120), bravo.result(120)
    emulator.state.faults.clear()

    report(f"faults: child SIGKILLed mid-call -> {error_code(hit)}: {hit.get('error')}")
    assert error_code(hit) == "instance_unavailable", hit
    assert "retry" in hit["error"]["message"]
    assert _answered_for(bystander, "bravo")
    assert _answered_for(_call(gateway, sessions["alfa"]), "alfa")
    assert _child_pid(gateway, emulator, "alfa") != victim
    _assert_logins_kept(gateway, emulator)


def test_a_child_frozen_mid_call_is_replaced_and_that_call_gets_a_clear_error(
    gateway: GatewayServer, emulator: RunningEmulator, sessions: dict[str, str]
) -> None:
    assert _answered_for(_call(gateway, sessions["bravo"]), "bravo")
    frozen = _child_pid(gateway, emulator, "bravo")
    emulator.state.faults.hang(2.0, "openapi")
    try:
        with arrivals(emulator, "openapi") as arrived, ThreadPoolExecutor(1) as calls:
            bravo = calls.submit(_call, gateway, sessions["bravo"])
            assert arrived.wait(60), "bravo's call never reached Feishu"
            os.kill(frozen, signal.SIGSTOP)
            hit = bravo.result(120)
        emulator.state.faults.clear()

        report(f"faults: child SIGSTOPped mid-call -> {error_code(hit)}: {hit.get('error')}")
        assert error_code(hit) == "instance_unavailable", hit
        assert _wait_gone(frozen), "the frozen child was never stopped"
        assert _answered_for(_call(gateway, sessions["bravo"]), "bravo")
        _assert_logins_kept(gateway, emulator)
    finally:
        if psutil.pid_exists(frozen):
            os.kill(frozen, signal.SIGKILL)


def test_feishu_refusing_connections_gives_clear_errors_and_keeps_every_login(
    gateway: GatewayServer, emulator: RunningEmulator, sessions: dict[str, str]
) -> None:
    emulator.stop()
    try:
        tool_reply = _call(gateway, sessions["alfa"])
        # A token that is due makes the gateway itself ask Feishu for a refresh.
        gateway.clock.advance(7300)
        refresh_reply = _call(gateway, sessions["alfa"])
    finally:
        emulator.start()

    report(f"faults: Feishu down, tool call -> {result_text(tool_reply)[:160]!r}")
    report(f"faults: Feishu down, refresh due -> {refresh_reply.get('error')}")
    assert tool_reply["result"]["isError"] is True
    assert "Alfa" not in result_text(tool_reply)
    assert error_code(refresh_reply) == "feishu_try_again", refresh_reply
    assert _answered_for(_call(gateway, sessions["alfa"]), "alfa")
    _assert_logins_kept(gateway, emulator)


def test_feishu_hanging_on_a_tool_call_gives_a_clear_error_after_the_child_timeout(
    gateway: GatewayServer, emulator: RunningEmulator, sessions: dict[str, str]
) -> None:
    emulator.state.faults.hang(CHILD_TIMEOUT + 10, "openapi")
    hit = _call(gateway, sessions["alfa"])
    emulator.state.faults.clear()

    report(f"faults: Feishu hangs a tool call -> {error_code(hit)}: {hit.get('error')}")
    assert error_code(hit) == "instance_unavailable", hit
    assert _answered_for(_call(gateway, sessions["alfa"]), "alfa")
    _assert_logins_kept(gateway, emulator)


def test_feishu_answering_a_refresh_after_the_timeout_does_not_lose_the_login(
    gateway: GatewayServer, emulator: RunningEmulator, sessions: dict[str, str]
) -> None:
    """Feishu acts on a refresh it answers late; the gateway must still end up with its answer.

    The emulator, like Feishu, does the work of a call whose client gave up: a refresh that
    times out at the gateway still spends the old refresh token.
    """
    gateway.clock.advance(7300)
    hang = FEISHU_TIMEOUT + 2
    emulator.state.faults.hang(hang, "token")
    before = len(emulator.state.calls.matching(TOKEN_PATH))
    with arrivals(emulator, "token") as arrived:
        first = _call(gateway, sessions["bravo"])
        assert arrived.is_set(), "no refresh was tried"
    emulator.state.faults.clear()
    # Let every refresh the emulator is still holding finish its work.
    time.sleep(hang + 1)
    tried = len(emulator.state.calls.matching(TOKEN_PATH)) - before

    after = _call(gateway, sessions["bravo"])
    report(
        f"faults: Feishu answers refreshes after {hang:g}s (gateway waits {FEISHU_TIMEOUT:g}s), "
        f"{tried} tries -> "
        f"first call {error_code(first) or 'answered'}, next call "
        f"{'answered' if _answered_for(after, 'bravo') else result_text(after)[:160]!r}"
    )
    assert error_code(first) in (None, "feishu_try_again"), first
    assert _answered_for(after, "bravo"), after
    _assert_logins_kept(gateway, emulator)


def test_gateway_killed_mid_refresh_keeps_every_login_feishu_did_not_renew(
    tmp_path: Path,
) -> None:
    """`larkgate serve` is SIGKILLed while two refreshes wait on a hanging Feishu.

    Feishu then fails alfa's refresh without acting on it, and acts on bravo's (whose answer
    nobody reads any more). Alfa must keep the login after the restart. Bravo's refresh token
    is spent at Feishu and its successor was never seen, so no gateway can keep that login:
    bravo must be told clearly to log in again, and nobody else may be touched.
    """
    with RunningEmulator(emulator_config(len(PEOPLE))) as emulator:
        serve = ServeProcess(tmp_path / "data", emulator, free_port())
        try:
            _crash_mid_refresh(serve, emulator)
        finally:
            serve.cleanup()


def _crash_mid_refresh(serve: ServeProcess, emulator: RunningEmulator) -> None:
    serve.start()
    # Tokens that live 4 s are due for a refresh 2 s after they were handed out.
    emulator.state.config.access_token_ttl = 4
    sessions = {login: log_in(serve.url, login) for login in PEOPLE}
    time.sleep(2.5)
    emulator.state.faults.hang(3.0, "token")
    emulator.state.faults.queue("token", [InjectedFault(500, 20050, "server busy")])
    before = len(emulator.state.calls.matching(TOKEN_PATH))
    with arrivals(emulator, "token") as arrived, ThreadPoolExecutor(2) as calls:
        pending = [calls.submit(_raw_call, serve.url, sessions["alfa"])]
        assert arrived.wait_for(1), "alfa's refresh never reached Feishu"
        pending.append(calls.submit(_raw_call, serve.url, sessions["bravo"]))
        assert arrived.wait_for(2), "bravo's refresh never reached Feishu"
        serve.kill(signal.SIGKILL)
        for call in pending:
            assert isinstance(call.result(60), Exception)  # the connection died with it
    # Only new requests stop hanging: the fault stays queued for alfa's sleeping refresh.
    emulator.state.faults.hang(0, "all")
    deadline = time.monotonic() + 30
    while len(emulator.state.calls.matching(TOKEN_PATH)) < before + 2:
        assert time.monotonic() < deadline, "Feishu never finished the abandoned refreshes"
        time.sleep(0.1)
    emulator.state.config.access_token_ttl = 7200

    serve.start()
    alfa, bravo = _call_url(serve.url, sessions["alfa"]), _call_url(serve.url, sessions["bravo"])
    report(
        "faults: gateway SIGKILLed mid-refresh -> alfa (Feishu did not act) "
        f"{'answered' if _answered_for(alfa, 'alfa') else result_text(alfa)[:120]!r}; bravo "
        f"(Feishu acted, answer lost) {result_text(bravo)[:200]!r}"
    )
    assert _answered_for(alfa, "alfa"), alfa
    alfa_id = _open_id(emulator, "alfa")
    used = [c for c in emulator.state.calls.matching("/open-apis/im/v1/") if c.open_id == alfa_id]
    current = emulator_tokens(emulator, alfa_id)["access_token"]
    assert used and used[-1].token_fingerprint == fingerprint(current)
    assert bravo["result"]["isError"] is True
    assert "login_required" in result_text(bravo) and "/oauth/start" in result_text(bravo)
    assert "renew" in result_text(bravo)


def _raw_call(url: str, session_id: str) -> dict[str, Any] | Exception:
    try:
        return _call_url(url, session_id)
    except httpx.HTTPError as exc:
        return exc


def _call_url(url: str, session_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
        response = call_chat_list(http, session_id)
    assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:300]}"
    reply: dict[str, Any] = response.json()
    return reply
