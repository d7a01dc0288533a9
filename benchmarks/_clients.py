"""Minimal MCP clients over plain httpx, so that the client's own cost is the same everywhere.

- ``StreamableSession``: POST /mcp with the gateway's ``Mcp-Session-Id``;
- ``SseSession``: GET /sse, POST /messages?sessionId=..., replies read off the stream;
- ``DirectChild``: POST to a lark-mcp child's /mcp with the user's token as Bearer header.
- ``DirectSseChild``: a lark-mcp child in SSE mode, through ``SseSession`` with the user's token.

Each has ``call(message) -> reply``; ``tool_call(seq)`` builds the benchmark's tools/call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ACCEPT = "application/json, text/event-stream"
PROTOCOL_VERSION = "2025-06-18"
CHAT_LIST = "im_v1_chat_list"
LOGIN_LINK = re.compile(r"https?://[^\s\"']+/oauth/start\?login=[A-Za-z0-9_-]+")
LOGIN_FORM_FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)"')
CONSENT_REQUEST = re.compile(r'name="request" value="([^"]+)"')
CONSENT_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def load_client() -> httpx.AsyncClient:
    """The benchmark's one HTTP client.

    Its idle connections close after 2 s, before the servers' own 5 s keep-alive timeout
    (uvicorn's and Node's default), so that no call races a server closing the connection.
    """
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=2000, keepalive_expiry=2.0
    )
    return httpx.AsyncClient(trust_env=False, timeout=120, limits=limits)


class CallFailed(Exception):
    """A reply that is not a successful tool result, or no reply at all."""


def tool_call(seq: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": seq,
        "method": "tools/call",
        "params": {"name": CHAT_LIST, "arguments": {"params": {"page_size": 5}}},
    }


def initialize(seq: int = 0) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": seq,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "larkgate-bench", "version": "0"},
        },
    }


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def check_tool_reply(reply: dict[str, Any], expect_text: str | None = None) -> str:
    """The reply's text; CallFailed unless it is a successful tool result (naming the user)."""
    result = reply.get("result")
    if not isinstance(result, dict):
        raise CallFailed(f"no result: {json.dumps(reply)[:300]}")
    text = "\n".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict))
    if result.get("isError"):
        raise CallFailed(f"tool error: {text[:300]}")
    if expect_text is not None and expect_text not in text:
        raise CallFailed(f"reply does not mention {expect_text!r}: {text[:300]}")
    return text


def parse_mcp_body(response: httpx.Response) -> dict[str, Any]:
    """A JSON body, or the data of the one SSE event that lark-mcp's streamable mode sends."""
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = "\n".join(
            line[5:].lstrip() for line in text.splitlines() if line.startswith("data:")
        )
    reply = json.loads(text)
    if not isinstance(reply, dict):
        raise CallFailed(f"unexpected body {text[:200]}")
    return reply


def instructions_of(reply: dict[str, Any]) -> str:
    return str((reply.get("result") or {}).get("instructions") or "")


async def play_browser_login(http: httpx.AsyncClient, instructions: str, login: str) -> None:
    """Follow the login link in ``instructions`` the way a browser would, as emulator ``login``."""
    found = LOGIN_LINK.search(instructions)
    if found is None:
        raise CallFailed(f"no login link in {instructions!r}")
    link = found.group(0)
    page = await http.get(link)
    fields = dict(LOGIN_FORM_FIELD.findall(page.text))
    if page.status_code != 200 or not {"login", "confirm"} <= set(fields):
        raise CallFailed(f"/oauth/start answered {page.status_code} without its form")
    # Press the page's button as a browser does: with the page's cookie and Origin. Users log
    # in concurrently over one client, whose cookie jar is no one browser's: send this page's.
    browser_cookie = page.headers.get("set-cookie", "").split(";")[0]
    parts = urlsplit(link)
    start = await http.post(
        f"{parts.scheme}://{parts.netloc}/oauth/start",
        data={name: html.unescape(value) for name, value in fields.items()},
        headers={"Origin": f"{parts.scheme}://{parts.netloc}", "Cookie": browser_cookie},
    )
    if start.status_code != 302:
        raise CallFailed(f"the login page's button answered {start.status_code}")
    feishu = await http.get(f"{start.headers['location']}&emulator_user={login}")
    if feishu.status_code != 302:
        raise CallFailed(f"emulator authorize answered {feishu.status_code}")
    done = await http.get(feishu.headers["location"])
    if done.status_code != 200:
        raise CallFailed(f"/oauth/callback answered {done.status_code}: {done.text[:200]}")


async def oauth_access_token(base_url: str, login: str) -> str:
    """An access token for the gateway's /mcp, got the way an MCP client gets one.

    Register a client, send a browser (its own cookies) through the consent page and the
    emulator's Feishu login as ``login``, and redeem the code with PKCE. The redirect URI is
    never visited: the code is read from the gateway's final redirect.
    """
    redirect_uri = "http://127.0.0.1:9/callback"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    async with httpx.AsyncClient(trust_env=False, timeout=60) as browser:
        meta = (await browser.get(f"{base_url}/.well-known/oauth-authorization-server")).json()
        registered = await browser.post(
            meta["registration_endpoint"],
            json={
                "client_name": "larkgate-bench",
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
        )
        client_id = registered.json()["client_id"]
        consent = await browser.get(
            meta["authorization_endpoint"],
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "state": secrets.token_urlsafe(8),
                "code_challenge": challenge.rstrip(b"=").decode(),
                "code_challenge_method": "S256",
                "resource": f"{base_url}/mcp",
                "scope": "mcp",
            },
        )
        request_id, action = (
            CONSENT_REQUEST.search(consent.text),
            CONSENT_ACTION.search(consent.text),
        )
        if request_id is None or action is None:
            raise CallFailed(f"no consent form: HTTP {consent.status_code} {consent.text[:200]}")
        decided = await browser.post(
            html.unescape(action.group(1)),
            data={"request": html.unescape(request_id.group(1)), "decision": "approve"},
        )
        feishu = await browser.get(f"{decided.headers['location']}&emulator_user={login}")
        back = await browser.get(feishu.headers["location"])
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        token = await browser.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
        )
        if token.status_code != 200:
            raise CallFailed(f"token endpoint answered {token.status_code}: {token.text[:200]}")
        return str(token.json()["access_token"])


class StreamableSession:
    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str | None = None) -> None:
        self._http = http
        self._url = f"{base_url}/mcp"
        self._token = token
        self.session_id = ""
        self.instructions = ""

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
            headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
        return headers

    async def open(self) -> StreamableSession:
        response = await self._http.post(
            self._url, content=json.dumps(initialize()), headers=self._headers()
        )
        response.raise_for_status()
        self.session_id = response.headers["mcp-session-id"]
        self.instructions = instructions_of(parse_mcp_body(response))
        await self._http.post(self._url, content=json.dumps(INITIALIZED), headers=self._headers())
        return self

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        response = await self._http.post(
            self._url, content=json.dumps(message), headers=self._headers()
        )
        if response.status_code != 200:
            raise CallFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        return parse_mcp_body(response)

    async def close(self) -> None:
        if self.session_id:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(self._url, headers=self._headers())


class SseSession:
    """HTTP+SSE (2024-11-05) client: one reader task hands replies to waiting callers by id."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        sse_path: str = "/sse",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._http = http
        self._headers = headers or {}
        self._base = base_url
        self._sse_url = f"{base_url}{sse_path}"
        self._endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stream: contextlib.AbstractAsyncContextManager[httpx.Response] | None = None
        self.messages_url = ""
        self.instructions = ""

    async def open(self, timeout: float = 30) -> SseSession:
        self._stream = self._http.stream(
            "GET",
            self._sse_url,
            headers={"Accept": "text/event-stream", **self._headers},
            timeout=None,
        )
        response = await self._stream.__aenter__()
        if response.status_code != 200:
            raise CallFailed(f"GET {self._sse_url} answered {response.status_code}")
        self._reader = asyncio.create_task(self._read(response))
        endpoint = await asyncio.wait_for(self._endpoint, timeout)
        self.messages_url = endpoint if "://" in endpoint else f"{self._base}{endpoint}"
        reply = await self.call(initialize(), timeout=timeout)
        self.instructions = instructions_of(reply)
        await self._post(INITIALIZED)
        return self

    async def _read(self, response: httpx.Response) -> None:
        event, data = "message", []
        try:
            async for line in response.aiter_lines():
                if line == "":
                    if data:
                        self._dispatch(event, "\n".join(data))
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
        except httpx.HTTPError as exc:
            self._fail_all(CallFailed(f"stream broke: {type(exc).__name__}"))
            return
        self._fail_all(CallFailed("stream ended"))

    def _dispatch(self, event: str, data: str) -> None:
        if event == "endpoint":
            if not self._endpoint.done():
                self._endpoint.set_result(data)
            return
        reply = json.loads(data)
        waiter = self._waiting.pop(reply.get("id"), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail_all(self, exc: Exception) -> None:
        if not self._endpoint.done():
            self._endpoint.set_exception(exc)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiting.clear()

    async def _post(self, message: dict[str, Any]) -> None:
        response = await self._http.post(
            self.messages_url,
            content=json.dumps(message),
            headers={"Content-Type": "application/json", **self._headers},
        )
        if response.status_code not in (200, 202):
            raise CallFailed(
                f"POST messages answered {response.status_code}: {response.text[:200]}"
            )

    async def call(self, message: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message["id"]] = waiter
        try:
            await self._post(message)
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiting.pop(message["id"], None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._reader
        if self._stream is not None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await self._stream.__aexit__(None, None, None)


class DirectSseChild:
    """A lark-mcp child in SSE mode, over one stream opened with the user's token: the floor
    for the gateway's default hop, called with the same client code as the gateway's /sse."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str) -> None:
        self._session = SseSession(http, base_url, headers={"Authorization": f"Bearer {token}"})
        self._opened = False

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self._opened:
            await self._session.open()
            self._opened = True
        return await self._session.call(message, timeout=120.0)

    async def close(self) -> None:
        await self._session.close()


class DirectChild:
    """A lark-mcp child in streamable mode, called as the gateway calls it."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str | None) -> None:
        self._http = http
        self._url = url
        self._headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        response = await self._http.post(
            self._url, content=json.dumps(message), headers=self._headers
        )
        if response.status_code != 200:
            raise CallFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        return parse_mcp_body(response)

    async def close(self) -> None:
        return None
