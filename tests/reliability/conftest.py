"""The reliability suite's switches: long variants behind LARKGATE_LONG_TESTS=1, a summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _pytest.terminal import TerminalReporter

from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.config import make_user
from support import GatewayServer, free_port

from .hostile_kit import HOSTILE_LOGINS
from .reliability_kit import (
    LONG,
    REPORT,
    STALL_DEADLINE,
    ServeProcess,
    emulator_config,
    running_gateway,
)


@pytest.fixture(autouse=True)
def _long_tests_only_when_asked(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("slow") is not None and not LONG:
        pytest.skip("long variant: set LARKGATE_LONG_TESTS=1")
    yield


@pytest.fixture(scope="package")
def attacked_emulator() -> Iterator[RunningEmulator]:
    """The Feishu of the gateway the hostile tests share (starting one costs seconds)."""
    config = EmulatorConfig(users=[make_user(login) for login in HOSTILE_LOGINS])
    with RunningEmulator(config) as running:
        yield running


@pytest.fixture(scope="package")
def attacked_gateway(
    tmp_path_factory: pytest.TempPathFactory, attacked_emulator: RunningEmulator
) -> Iterator[GatewayServer]:
    data_dir = tmp_path_factory.mktemp("attacked") / "data"
    with running_gateway(data_dir, attacked_emulator) as server:
        yield server


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`larkgate serve` as an operator runs it, with alfa and bravo known to its Feishu;
    shared by the tests that need the real process (starting one costs seconds)."""
    with RunningEmulator(emulator_config(2)) as emulator:
        deadlines = {
            "LARKGATE_HEAD_TIMEOUT": str(STALL_DEADLINE),
            "LARKGATE_BODY_TIMEOUT": str(STALL_DEADLINE),
        }
        data_dir = tmp_path_factory.mktemp("served") / "data"
        serve = ServeProcess(data_dir, emulator, free_port(), deadlines)
        try:
            yield serve.start()
        finally:
            serve.cleanup()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("reliability figures")
        for line in REPORT:
            terminalreporter.write_line(line)
