"""What an OAuth client finds first: the 401 challenge and the two metadata documents."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from oauth_person import ACCEPT, INIT

from larkgate.config import EndpointAuth, Settings
from support import GatewayServer


def test_mcp_answers_401_by_default_and_sse_keeps_the_login_link() -> None:
    assert Settings.model_fields["mcp_auth"].default is EndpointAuth.OAUTH
    assert Settings.model_fields["sse_auth"].default is EndpointAuth.LOGIN_LINK


def test_mcp_without_a_credential_is_401_with_an_absolute_resource_metadata_url(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    response = shared_http.post("/mcp", json=INIT, headers=ACCEPT)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    expected = f'resource_metadata="{shared_gateway.url}/.well-known/oauth-protected-resource/mcp"'
    assert expected in challenge
    assert response.json()["error"]["data"]["code"] == "credential_required"
    assert shared_http.get("/mcp").status_code == 401
    assert shared_http.delete("/mcp", headers={"Mcp-Session-Id": "x"}).status_code == 401


def test_sse_in_its_default_mode_opens_a_stream_without_a_credential(
    shared_http: httpx.Client,
) -> None:
    with shared_http.stream("GET", "/sse") as stream:
        assert stream.status_code == 200
        first = next(stream.iter_lines())
    assert first == "event: endpoint"


def test_each_endpoint_has_its_own_setting(start_gateway: Callable[..., GatewayServer]) -> None:
    gateway = start_gateway(mcp_auth="login_link", sse_auth="oauth")
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        assert http.post("/mcp", json=INIT, headers=ACCEPT).status_code == 200
        refused = http.get("/sse")
    assert refused.status_code == 401
    assert "/.well-known/oauth-protected-resource/sse" in refused.headers["www-authenticate"]


def test_protected_resource_metadata_names_this_gateway_as_its_authorization_server(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    base = shared_gateway.url
    for path, resource in (
        ("/.well-known/oauth-protected-resource/mcp", f"{base}/mcp"),
        ("/.well-known/oauth-protected-resource/sse", f"{base}/sse"),
        ("/.well-known/oauth-protected-resource", base),
    ):
        response = shared_http.get(path)
        assert response.status_code == 200, path
        body = response.json()
        assert body["resource"] == resource
        assert body["authorization_servers"] == [base]
        assert response.headers["access-control-allow-origin"] == "*"


def test_authorization_server_metadata_has_the_exact_issuer_and_only_s256(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    body = shared_http.get("/.well-known/oauth-authorization-server").json()
    base = shared_gateway.url
    assert body["issuer"] == base
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["token_endpoint_auth_methods_supported"] == ["none"]
    assert body["authorization_endpoint"] == f"{base}/authorize"
    assert body["token_endpoint"] == f"{base}/token"
    assert body["registration_endpoint"] == f"{base}/register"
    assert body["revocation_endpoint"] == f"{base}/revoke"
    assert body["response_types_supported"] == ["code"]


def test_the_token_endpoint_answers_a_cors_preflight(shared_http: httpx.Client) -> None:
    response = shared_http.options(
        "/token",
        headers={"Origin": "http://localhost:6274", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
