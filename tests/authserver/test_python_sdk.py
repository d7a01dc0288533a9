"""The Python SDK's own OAuth client logs in to the gateway by itself and calls a tool."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from oauth_person import CHAT_LIST, approve, query_of
from pydantic import AnyUrl

from larkgate.emulator import RunningEmulator
from support import GatewayServer, free_port, tool_text

pytestmark = pytest.mark.anyio


class MemoryStorage:
    """The SDK's token storage, and how often the person had to log in through the browser."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.browser_logins = 0

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def provider_for(gateway: GatewayServer, user: str, storage: MemoryStorage) -> OAuthClientProvider:
    """An SDK provider whose 'browser' is a person logging in as ``user``."""
    landed: list[str] = []

    async def open_browser(authorization_url: str) -> None:
        landed.append(await anyio.to_thread.run_sync(approve, authorization_url, user))
        storage.browser_logins += 1

    async def wait_for_callback() -> AuthorizationCodeResult:
        back = query_of(landed.pop())
        return AuthorizationCodeResult(code=back["code"], state=back["state"], iss=back["iss"])

    metadata = OAuthClientMetadata(
        client_name="Python SDK test client",
        redirect_uris=[AnyUrl(f"http://127.0.0.1:{free_port()}/callback")],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    return OAuthClientProvider(
        server_url=f"{gateway.url}/mcp",
        client_metadata=metadata,
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=wait_for_callback,
    )


async def test_the_python_sdk_logs_in_by_itself_and_its_call_reaches_feishu_as_the_user(
    oauth_gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    bob = emulator.state.config.find_user("bob")
    assert bob
    storage = MemoryStorage()
    provider = provider_for(oauth_gateway, "bob", storage)
    emulator.state.calls.clear()

    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(f"{oauth_gateway.url}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})

    assert not result.is_error, tool_text(result)
    assert "Bob" in tool_text(result), tool_text(result)
    assert storage.tokens is not None and storage.tokens.access_token.startswith("lga_")
    assert storage.client is not None and storage.client.client_id.startswith("lgc_")
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [bob.open_id]


async def test_the_python_sdk_logs_in_again_when_the_gateway_calls_its_token_expired(
    oauth_gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    storage = MemoryStorage()
    async with (
        httpx2.AsyncClient(auth=provider_for(oauth_gateway, "carol", storage), timeout=30) as http,
        Client(streamable_http_client(f"{oauth_gateway.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
    assert storage.tokens is not None
    first = storage.tokens

    # Only the gateway's clock moves: the client still believes in its token, meets a 401
    # and logs in again with the client it registered before.
    oauth_gateway.clock.advance(oauth_gateway.settings.oauth_access_token_ttl + 1)
    client_before = storage.client
    async with (
        httpx2.AsyncClient(auth=provider_for(oauth_gateway, "carol", storage), timeout=30) as http,
        Client(streamable_http_client(f"{oauth_gateway.url}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})
    assert "Carol" in tool_text(result), tool_text(result)
    assert storage.tokens is not None and storage.tokens.access_token != first.access_token
    assert storage.client == client_before
    assert storage.browser_logins == 2


async def test_the_python_sdk_renews_an_expired_token_with_a_rotated_refresh_token(
    oauth_gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    storage = MemoryStorage()
    provider = provider_for(oauth_gateway, "alice", storage)
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(f"{oauth_gateway.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
    assert storage.tokens is not None
    first = storage.tokens

    # Both clocks agree the token has expired: the gateway's moves, and the client's record of
    # when its token ends is put in the past, as time would have done. Done between sessions:
    # the SDK's background stream requests must not be in flight while the clock jumps.
    oauth_gateway.clock.advance(oauth_gateway.settings.oauth_access_token_ttl + 1)
    provider.context.token_expiry_time = 1.0
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(f"{oauth_gateway.url}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})

    assert "Alice" in tool_text(result), tool_text(result)
    assert storage.tokens is not None
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token not in (None, first.refresh_token)
    assert storage.browser_logins == 1
