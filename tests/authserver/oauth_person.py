"""A person at a browser for the OAuth tests, and the raw OAuth calls a client makes.

``approve`` plays the user through the gateway's consent page and the emulator's Feishu login
and returns where the gateway finally sends the browser: the client's redirect URI with the
code. It only ever follows URLs on 127.0.0.1 (the gateway, the emulator, a client's loopback
listener), and refuses anything else.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from support import free_port

CONSENT_REQUEST = re.compile(r'name="request" value="([^"]+)"')
CONSENT_ACTION = re.compile(r'<form method="post" action="([^"]+)"')
ACCESS_KEY = re.compile(r"lgk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
FORM_TOKEN = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise AssertionError(f"the test browser only visits 127.0.0.1, not {host!r}")
    return url


def browser() -> httpx.Client:
    return httpx.Client(timeout=30, trust_env=False)


def open_consent(person: httpx.Client, authorize_url: str) -> httpx.Response:
    consent = person.get(loopback_only(authorize_url))
    assert consent.status_code == 200, consent.text
    return consent


def origin_of(url: str) -> dict[str, str]:
    """The Origin header a browser sends with a form post from a page at ``url``."""
    parts = urlsplit(url)
    return {"Origin": f"{parts.scheme}://{parts.netloc}"}


def decide(person: httpx.Client, consent: httpx.Response, decision: str) -> httpx.Response:
    request_id = CONSENT_REQUEST.search(consent.text)
    action = CONSENT_ACTION.search(consent.text)
    assert request_id and action, consent.text
    # A browser sends Origin with a form post unless the page's referrer policy hides it.
    assert consent.headers["referrer-policy"] == "same-origin"
    return person.post(
        loopback_only(action.group(1)),
        data={"request": request_id.group(1), "decision": decision},
        headers=origin_of(str(consent.url)),
    )


def feishu_login(person: httpx.Client, feishu_url: str, user: str) -> str:
    """Log in at the emulated Feishu page; returns the gateway's answer's Location."""
    feishu = person.get(loopback_only(f"{feishu_url}&emulator_user={user}"))
    assert feishu.status_code == 302, feishu.text
    back = person.get(loopback_only(feishu.headers["location"]))
    assert back.status_code in (302, 303), back.text
    return str(back.headers["location"])


def approve(authorize_url: str, user: str, person: httpx.Client | None = None) -> str:
    """Allow the app and log in to Feishu as ``user``; returns the client's redirect with code."""
    own = person is None
    person = person or browser()
    try:
        consent = open_consent(person, authorize_url)
        decided = decide(person, consent, "approve")
        assert decided.status_code == 302, decided.text
        return feishu_login(person, decided.headers["location"], user)
    finally:
        if own:
            person.close()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- what an OAuth client does, step by step -------------------------------------------------


@dataclass
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


def register(
    http: httpx.Client, redirect_uris: list[str], name: str = "Test App"
) -> httpx.Response:
    return http.post(
        "/register",
        json={
            "client_name": name,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
    )


def authorize_url(base: str, client_id: str, redirect_uri: str, pkce: Pkce, **extra: str) -> str:
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": "st-" + secrets.token_urlsafe(8),
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "resource": f"{base}/mcp",
        "scope": "mcp",
        **extra,
    }
    return f"{base}/authorize?{urlencode({k: v for k, v in params.items() if v is not None})}"


def exchange(
    http: httpx.Client, client_id: str, code: str, redirect_uri: str, verifier: str, **extra: str
) -> httpx.Response:
    return http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            **extra,
        },
    )


def refresh(
    http: httpx.Client, client_id: str, refresh_token: str, **extra: str
) -> httpx.Response:
    return http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "client_id": client_id,
            "refresh_token": refresh_token,
            **extra,
        },
    )


# -- a whole grant, and MCP over HTTP with it --------------------------------------------------

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
CHAT_LIST = "im_v1_chat_list"
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": CHAT_LIST, "arguments": {"params": {"page_size": 5}}},
}


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    access_token: str
    refresh_token: str
    body: dict[str, Any]


def obtain_grant(http: httpx.Client, base: str, user: str, resource: str | None = None) -> Grant:
    """Register, consent, log in to Feishu as ``user`` and redeem the code: what a client does."""
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    client_id = register(http, [redirect_uri]).json()["client_id"]
    pkce = Pkce.new()
    url = authorize_url(base, client_id, redirect_uri, pkce, resource=resource or f"{base}/mcp")
    back = query_of(approve(url, user))
    answer = exchange(http, client_id, back["code"], redirect_uri, pkce.verifier)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return Grant(client_id, redirect_uri, body["access_token"], body["refresh_token"], body)


def bearer(token: str) -> dict[str, str]:
    return {**ACCEPT, "Authorization": f"Bearer {token}"}


def open_session(http: httpx.Client, token: str) -> str:
    response = http.post("/mcp", json=INIT, headers=bearer(token))
    assert response.status_code == 200, response.text
    return str(response.headers["mcp-session-id"])
