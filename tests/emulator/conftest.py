from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from larkgate.emulator import EmulatedUser, RunningEmulator
from larkgate.emulator.control_client import EmulatorControl


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[RunningEmulator]:
    # One server for the whole run, reset before each test: starting and stopping uvicorn
    # per test would dominate the suite's time.
    with RunningEmulator() as running:
        yield running


@pytest.fixture
def emulator(shared_emulator: RunningEmulator) -> RunningEmulator:
    shared_emulator.state.reset()
    return shared_emulator


@pytest.fixture(scope="session")
def _shared_control(shared_emulator: RunningEmulator) -> Iterator[EmulatorControl]:
    with EmulatorControl(shared_emulator.url) as handle:
        yield handle


@pytest.fixture
def control(emulator: RunningEmulator, _shared_control: EmulatorControl) -> EmulatorControl:
    return _shared_control


@pytest.fixture(scope="session")
def _shared_http(shared_emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_emulator.url, timeout=5.0, follow_redirects=False) as client:
        yield client


@pytest.fixture
def http(emulator: RunningEmulator, _shared_http: httpx.Client) -> httpx.Client:
    return _shared_http


@pytest.fixture
def alice(emulator: RunningEmulator) -> EmulatedUser:
    return emulator.state.config.users[0]


@pytest.fixture
def bob(emulator: RunningEmulator) -> EmulatedUser:
    return emulator.state.config.users[1]
