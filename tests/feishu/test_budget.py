"""The cap on the gateway's own OAuth calls: background renewals get a share, interactive
calls go first, and Feishu's 429 pauses everyone. Time is frozen, so nothing here races."""

from __future__ import annotations

import asyncio

import pytest

from larkgate.feishu.budget import CallBudget, Priority

pytestmark = pytest.mark.anyio


class FrozenTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    await asyncio.sleep(0.25)


async def test_background_calls_use_only_their_share_of_a_window() -> None:
    time = FrozenTime()
    budget = CallBudget(per_second=4, per_minute=100, background_share=0.5, monotonic=time)
    done: list[int] = []

    async def background(n: int) -> None:
        await budget.acquire(Priority(background=True))
        done.append(n)

    tasks = [asyncio.create_task(background(n)) for n in range(4)]
    await settle()
    assert len(done) == 2
    await budget.acquire(Priority(background=False))  # interactive calls still fit
    await budget.acquire(Priority(background=False))

    time.now += 1.0
    await asyncio.gather(*tasks)
    assert sorted(done) == [0, 1, 2, 3]


async def test_an_interactive_call_goes_before_waiting_background_calls() -> None:
    time = FrozenTime()
    budget = CallBudget(per_second=1, per_minute=100, background_share=1.0, monotonic=time)
    await budget.acquire(Priority(background=False))
    order: list[str] = []

    async def call(name: str, background: bool) -> None:
        await budget.acquire(Priority(background=background))
        order.append(name)

    first_in_line = asyncio.create_task(call("background", True))
    await asyncio.sleep(0.1)
    later = asyncio.create_task(call("interactive", False))
    await asyncio.sleep(0.1)
    time.now += 1.0
    await later
    assert order == ["interactive"]

    time.now += 1.0
    await first_in_line
    assert order == ["interactive", "background"]


async def test_a_promoted_background_call_goes_as_interactive() -> None:
    time = FrozenTime()
    budget = CallBudget(per_second=2, per_minute=100, background_share=0.5, monotonic=time)
    await budget.acquire(Priority(background=True))
    priority = Priority(background=True)
    waiting = asyncio.create_task(budget.acquire(priority))
    await settle()
    assert not waiting.done()

    priority.background = False  # an interactive caller joined this refresh

    await asyncio.wait_for(waiting, 5)


async def test_a_429_pause_holds_every_call() -> None:
    time = FrozenTime()
    budget = CallBudget(per_second=10, per_minute=100, background_share=1.0, monotonic=time)
    budget.pause(2.0)
    waiting = asyncio.create_task(budget.acquire(Priority(background=False)))
    await settle()
    assert not waiting.done()

    time.now += 2.0

    await asyncio.wait_for(waiting, 5)


async def test_the_minute_cap_holds_too() -> None:
    time = FrozenTime()
    budget = CallBudget(per_second=50, per_minute=3, background_share=1.0, monotonic=time)
    for _ in range(3):
        await budget.acquire(Priority(background=False))
        time.now += 1.0
    waiting = asyncio.create_task(budget.acquire(Priority(background=False)))
    await settle()
    assert not waiting.done()

    time.now += 57.5

    await asyncio.wait_for(waiting, 5)
