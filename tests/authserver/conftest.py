"""Fixtures for the authorization server tests: gateways with OAuth on /mcp."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from larkgate.emulator import EmulatorConfig, RunningEmulator
from support import LARK_MCP_CLI, GatewayServer, gateway_settings


@pytest.fixture
def oauth_gateway(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    """A gateway with the shipped default for /mcp: OAuth (the shared helper picks login links)."""
    return start_gateway(mcp_auth="oauth")


@pytest.fixture
def http(oauth_gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=oauth_gateway.url, timeout=30, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One gateway for a module of tests that only read it or add independent records.

    Starting a gateway (and its default lark-mcp) per parametrized case would dominate the
    run; the rate limit is lifted so the module's own requests do not trip it.
    """
    if not LARK_MCP_CLI.is_file():
        pytest.fail("lark-mcp is not installed: run `npm ci --ignore-scripts`")
    data_dir: Path = tmp_path_factory.mktemp("shared-gateway")
    with RunningEmulator(EmulatorConfig()) as emulator:
        settings = gateway_settings(data_dir, emulator, mcp_auth="oauth", auth_rate_limit=100_000)
        with GatewayServer(settings) as server:
            yield server


@pytest.fixture
def shared_http(shared_gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_gateway.url, timeout=30, trust_env=False) as client:
        yield client
