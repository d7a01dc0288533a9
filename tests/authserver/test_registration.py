"""Dynamic client registration: public clients only, and only redirect URIs that are safe."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from oauth_person import register

from support import GatewayServer

HOSTILE_REDIRECTS = [
    "javascript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "http://127.0.0.1:8000/callback#fragment",
    "https://app.example/callback#",
    "http://evil.example/callback",
    "http://127.0.0.1.evil.example/callback",
    "http://user:pass@127.0.0.1/callback",
    "https://127.0.0.1@evil.example/callback",
    "http://evil.example\\@127.0.0.1/callback",
    "file:///etc/passwd",
    "vbscript:msgbox(1)",
    "cursor://anysphere.cursor-retrieval/oauth/callback",
    "/relative/callback",
    "http://127.0.0.1:99999/callback",
    "https:///no-host",
    "http://127.0.0.1/call back",
]


def test_a_public_client_registers_with_loopback_and_https_redirects(
    shared_http: httpx.Client,
) -> None:
    uris = ["http://127.0.0.1:33418/callback", "https://app.example/oauth/callback"]
    response = register(shared_http, uris, name="Claude Code")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["client_id"].startswith("lgc_")
    assert body["redirect_uris"] == uris
    assert body["client_name"] == "Claude Code"
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert response.headers["cache-control"] == "no-store"


def test_a_request_for_a_client_secret_gets_a_public_client(shared_http: httpx.Client) -> None:
    response = shared_http.post(
        "/register",
        json={
            "redirect_uris": ["http://localhost:3334/oauth/callback"],
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    assert response.status_code == 201
    assert response.json()["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in response.json()


@pytest.mark.parametrize("uri", HOSTILE_REDIRECTS)
def test_registration_with_a_hostile_redirect_uri_is_refused(
    shared_http: httpx.Client, uri: str
) -> None:
    response = register(shared_http, ["http://127.0.0.1:4000/ok", uri])
    assert response.status_code == 400, uri
    assert response.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"redirect_uris": []},
        {"redirect_uris": "http://127.0.0.1/cb"},
        {"redirect_uris": [42]},
        {"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["client_credentials"]},
        {"redirect_uris": ["http://127.0.0.1/cb"], "response_types": ["token"]},
        {"redirect_uris": [f"http://127.0.0.1:{4000 + i}/cb" for i in range(11)]},
    ],
)
def test_malformed_registrations_are_refused(shared_http: httpx.Client, body: object) -> None:
    response = shared_http.post("/register", json=body)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def test_a_body_that_is_not_a_json_object_is_refused(shared_http: httpx.Client) -> None:
    assert shared_http.post("/register", content=b"[1, 2]").status_code == 400
    assert shared_http.post("/register", content=b"not json").status_code == 400


def test_control_characters_in_the_client_name_are_dropped(shared_http: httpx.Client) -> None:
    response = register(
        shared_http, ["http://127.0.0.1:4000/cb"], name="Evil\nINFO forged line\x07"
    )
    assert response.json()["client_name"] == "EvilINFO forged line"


def test_an_operator_may_allow_a_private_use_scheme(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway(oauth_redirect_schemes=["cursor"])
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        allowed = register(client, ["cursor://anysphere.cursor-retrieval/oauth/callback"])
        still_refused = register(client, ["vscode://callback"])
    assert allowed.status_code == 201
    assert still_refused.status_code == 400


def test_registration_is_rate_limited_per_address(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    gateway = start_gateway(auth_rate_limit=2)
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        answers = [register(client, ["http://127.0.0.1:4000/cb"]) for _ in range(10)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert refused[0].headers["retry-after"].isdigit()
    assert refused[0].json()["error"] == "temporarily_unavailable"
