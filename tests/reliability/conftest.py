"""The reliability suite's switches: long variants behind LARKGATE_LONG_TESTS=1, a summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _pytest.terminal import TerminalReporter
from reliability_kit import LONG, REPORT


@pytest.fixture(autouse=True)
def _long_tests_only_when_asked(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("slow") is not None and not LONG:
        pytest.skip("long variant: set LARKGATE_LONG_TESTS=1")
    yield


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("reliability figures")
        for line in REPORT:
            terminalreporter.write_line(line)
