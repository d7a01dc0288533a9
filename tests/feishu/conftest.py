"""Fixtures for token-keeping tests: one emulator per module, reset before each test, and a
bench per test built with per-test settings."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tokenbench import Bench

from larkgate.emulator import EmulatorConfig, RunningEmulator


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorConfig()) as running:
        yield running


@pytest.fixture
def emulator(shared_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    """The module's emulator as if new: no tokens, calls or faults, clock and config reset."""
    state = shared_emulator.state
    config = dataclasses.replace(state.config, users=list(state.config.users))
    yield shared_emulator
    for field in dataclasses.fields(config):
        setattr(state.config, field.name, getattr(config, field.name))
    state.set_rate_limits(config.rate_limit_per_second, config.rate_limit_per_minute)
    state.reset()
    state.clock.reset()


@pytest.fixture
async def make_bench(
    tmp_path: Path, emulator: RunningEmulator
) -> AsyncIterator[Callable[..., Bench]]:
    built: list[Bench] = []

    def make(**overrides: Any) -> Bench:
        data_dir = overrides.pop("data_dir", tmp_path / "data")
        bench = Bench.build(data_dir, emulator, **overrides)
        built.append(bench)
        return bench

    yield make
    for bench in built:
        await bench.close()


@pytest.fixture
def bench(make_bench: Callable[..., Bench]) -> Bench:
    return make_bench()
