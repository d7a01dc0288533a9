"""Many people calling tools at once through `larkgate serve`, over both transports.

Every reply must be an answer for the person who asked, Feishu (the emulator) must have seen
each call with that person's own token, the gateway's memory must stay within a stated bound,
and the CPU the machine spent meanwhile is reported (never asserted: CI machines are shared).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from larkgate.emulator import RunningEmulator
from support import (
    free_port,
    login_link_in,
    play_browser_login,
    sse_mcp_client,
    streamable_client,
    tool_text,
)

from .reliability_kit import (
    CHAT_ARGS,
    CHAT_LIST,
    PEOPLE,
    ServeProcess,
    emulator_config,
    foreign_chats,
    own_chat,
    report,
)

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
# Growth of the gateway's RSS from the end of the warm-up to the highest sample under load.
# The gateway keeps nothing per request, so what it may grow by is allocator slack and the
# per-session objects that exist from the warm-up on; 32 MiB is many times what we see.
RSS_GROWTH_BOUND = 32 * MIB
CPU_CEILING = 60.0


@dataclass
class LoadRun:
    people: int
    calls_each: int
    # Calls a second over everyone, arriving at random times; None: each calls back to back.
    rate: float | None = None
    errors: list[str] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)
    rss_samples: list[int] = field(default_factory=list)


class RssSampler:
    """Samples a process's RSS every interval on a thread until stopped."""

    def __init__(self, process: psutil.Process, interval: float = 0.25) -> None:
        self._process = process
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _client_for(login: str, url: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """Half the people use HTTP+SSE, the other half Streamable HTTP."""
    if PEOPLE.index(login) % 2 == 0:
        return lambda: sse_mcp_client(url)
    return lambda: streamable_client(url)


async def _person(
    login: str,
    url: str,
    run: LoadRun,
    warmed: Callable[[], None],
    go: anyio.Event,
    everyone: list[str],
) -> None:
    async with _client_for(login, url)() as client:
        page = await anyio.to_thread.run_sync(
            play_browser_login, login_link_in(client.instructions), login
        )
        assert page.status_code == 200, page.text
        first = await client.call_tool(CHAT_LIST, CHAT_ARGS)  # starts this person's child
        assert not first.is_error, tool_text(first)
        warmed()
        await go.wait()
        for n in range(run.calls_each):
            if run.rate is not None:
                await anyio.sleep(random.expovariate(run.rate / run.people))
            try:
                result = await client.call_tool(CHAT_LIST, CHAT_ARGS)
            except Exception as exc:
                run.errors.append(f"{login} call {n}: {type(exc).__name__}: {exc}")
                continue
            text = tool_text(result)
            if result.is_error or own_chat(login) not in text:
                run.errors.append(f"{login} call {n}: not an answer for them: {text[:200]}")
            elif stolen := foreign_chats(text, login, everyone):
                run.errors.append(f"{login} call {n}: saw the chats of {stolen}")
            else:
                run.answered[login] += 1


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _run_load(serve: ServeProcess, emulator: RunningEmulator, run: LoadRun) -> None:
    everyone = PEOPLE[: run.people]
    calls = run.people * run.calls_each
    go, all_warm, all_done = anyio.Event(), anyio.Event(), anyio.Event()
    counts = Counter[str]()

    def arrived(stage: str, event: anyio.Event) -> Callable[[], None]:
        def note() -> None:
            counts[stage] += 1
            if counts[stage] == run.people:
                event.set()

        return note

    async def person(login: str) -> None:
        await _person(login, serve.url, run, arrived("warm", all_warm), go, everyone)

    gateway = serve.ps
    async with anyio.create_task_group() as group:
        for login in everyone:
            group.start_soon(_tracked, person, login, arrived("done", all_done))
        with anyio.fail_after(600):
            await all_warm.wait()
        emulator.state.calls.clear()
        children = serve.children()
        baseline = gateway.memory_info().rss
        tester = psutil.Process()  # the clients and the emulator run in this process
        gateway_cpu, children_cpu = _cpu_seconds([gateway]), _cpu_seconds(children)
        tester_cpu = _cpu_seconds([tester])
        psutil.cpu_percent(None)
        started = time.monotonic()
        with RssSampler(gateway) as sampler:
            go.set()
            with anyio.fail_after(1200):
                await all_done.wait()
        wall = time.monotonic() - started
        machine = psutil.cpu_percent(None)
        gateway_used = _cpu_seconds([gateway]) - gateway_cpu
        children_used = _cpu_seconds(children) - children_cpu
        tester_used = _cpu_seconds([tester]) - tester_cpu
        run.rss_samples = [baseline, *sampler.samples]
        children_rss = sum(_rss(c) for c in children)

    growth = max(run.rss_samples) - baseline
    shape = "back to back" if run.rate is None else f"arriving at {run.rate:g} calls/s"
    report(
        f"load: {run.people} people x {run.calls_each} calls = {calls} tool calls "
        f"(half SSE, half Streamable HTTP, {shape}) in {wall:.1f}s, {calls / wall:.0f} "
        f"calls/s; errors {len(run.errors)}"
    )
    cores = psutil.cpu_count() or 1
    ours = 100 * (gateway_used + children_used + tester_used) / (wall * cores)
    report(
        f"load: machine CPU {machine:.0f}% of {cores} cores while it ran (a team's ceiling: "
        f"{CPU_CEILING:.0f}%; load average {psutil.getloadavg()[0]:.1f}, the machine is shared "
        f"with other runs); this test's own processes used {ours:.0f}% of the machine: gateway "
        f"{100 * gateway_used / wall:.0f}% of a core ({1000 * gateway_used / calls:.1f} ms CPU "
        f"a call), {len(children)} lark-mcp children {100 * children_used / wall:.0f}% "
        f"({1000 * children_used / calls:.1f} ms a call), clients and emulator "
        f"{100 * tester_used / wall:.0f}%"
    )
    report(
        f"load: gateway RSS {baseline / MIB:.1f} MiB after warm-up, peak "
        f"{max(run.rss_samples) / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB "
        f"(bound {RSS_GROWTH_BOUND / MIB:.0f} MiB); children RSS {children_rss / MIB:.0f} MiB"
    )


async def _tracked(work: Callable[[str], Any], login: str, done: Callable[[], None]) -> None:
    try:
        await work(login)
    finally:
        done()


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


@pytest.fixture
def serve_for(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(emulator: RunningEmulator, **settings: str) -> ServeProcess:
        serve = ServeProcess(tmp_path / "data", emulator, free_port(), settings)
        started.append(serve)
        return serve.start()

    yield start
    for serve in started:
        serve.cleanup()


def _check(run: LoadRun, emulator: RunningEmulator) -> None:
    assert run.errors == [], "\n".join(run.errors[:20])
    everyone = PEOPLE[: run.people]
    assert run.answered == dict.fromkeys(everyone, run.calls_each)

    reached = emulator.state.calls.matching("/open-apis/im/v1/chats")
    open_ids = {}
    for login in everyone:
        person = emulator.state.config.find_user(login)
        assert person is not None
        open_ids[person.open_id] = login
    assert {c.token_kind for c in reached} == {"user"}
    seen = Counter(open_ids.get(c.open_id or "", "someone else") for c in reached)
    assert seen == dict.fromkeys(everyone, run.calls_each)
    growth = max(run.rss_samples) - run.rss_samples[0]
    assert growth <= RSS_GROWTH_BOUND, f"gateway RSS grew {growth / MIB:.1f} MiB under load"


async def _load_test(
    serve_for: Callable[..., ServeProcess],
    people: int,
    calls_each: int,
    rate: float | None = None,
) -> None:
    with RunningEmulator(emulator_config(people)) as emulator:
        serve = serve_for(emulator, LARKGATE_MAX_INSTANCES=str(people))
        run = LoadRun(people, calls_each, rate)
        await _run_load(serve, emulator, run)
        _check(run, emulator)


async def test_people_calling_at_once_each_get_only_their_own_answers(
    serve_for: Callable[..., ServeProcess],
) -> None:
    await _load_test(serve_for, people=8, calls_each=40)


async def test_twenty_people_at_a_team_s_steady_pace_get_only_their_own_answers(
    serve_for: Callable[..., ServeProcess],
) -> None:
    """The load a team puts on the machine, reported against the 60% CPU ceiling."""
    await _load_test(serve_for, people=20, calls_each=15, rate=40.0)


@pytest.mark.slow
async def test_twenty_people_under_steady_load_get_only_their_own_answers(
    serve_for: Callable[..., ServeProcess],
) -> None:
    await _load_test(serve_for, people=20, calls_each=150)
