"""Fixtures shared by every test: the Feishu emulator and a gateway in front of real lark-mcp."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from larkgate.emulator import EmulatorConfig, RunningEmulator
from support import LARK_MCP_CLI, GatewayServer, gateway_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorConfig()) as running:
        yield running


@pytest.fixture
def start_gateway(
    tmp_path: Path, emulator: RunningEmulator
) -> Iterator[Callable[..., GatewayServer]]:
    """Start a gateway with settings overridden per test; every one is stopped afterwards."""
    if not LARK_MCP_CLI.is_file():
        pytest.fail("lark-mcp is not installed: run `npm ci --ignore-scripts`")
    started: list[GatewayServer] = []

    def start(**overrides: Any) -> GatewayServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        server = GatewayServer(gateway_settings(data_dir, emulator, **overrides)).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    return start_gateway()
