"""The authorization code flow over plain HTTP, the way a client drives it, good and bad."""

from __future__ import annotations

import logging

import httpx
import pytest
from oauth_person import (
    CALL,
    INIT,
    Pkce,
    approve,
    authorize_url,
    bearer,
    browser,
    decide,
    exchange,
    feishu_login,
    obtain_grant,
    open_consent,
    open_session,
    query_of,
    refresh,
    register,
)

from larkgate.emulator import RunningEmulator
from support import GatewayServer, free_port


def _client(http: httpx.Client) -> tuple[str, str]:
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    response = register(http, [redirect_uri])
    assert response.status_code == 201
    return response.json()["client_id"], redirect_uri


def _code(http: httpx.Client, base: str, user: str = "alice") -> tuple[str, str, str, Pkce]:
    client_id, redirect_uri = _client(http)
    pkce = Pkce.new()
    back = query_of(approve(authorize_url(base, client_id, redirect_uri, pkce), user))
    return client_id, redirect_uri, back["code"], pkce


def test_the_whole_flow_ends_in_a_tool_call_that_reaches_feishu_as_the_user(
    http: httpx.Client, oauth_gateway: GatewayServer, emulator: RunningEmulator
) -> None:
    alice = emulator.state.config.find_user("alice")
    assert alice

    grant = obtain_grant(http, oauth_gateway.url, "alice")
    assert grant.body["token_type"] == "Bearer"
    assert grant.body["expires_in"] == 3600
    assert grant.body["scope"] == "mcp"
    assert grant.access_token.startswith("lga_") and grant.refresh_token.startswith("lgr_")
    session_id = open_session(http, grant.access_token)
    emulator.state.calls.clear()

    reply = http.post(
        "/mcp", json=CALL, headers={**bearer(grant.access_token), "Mcp-Session-Id": session_id}
    )

    assert reply.status_code == 200
    result = reply.json()["result"]
    assert not result.get("isError"), result
    assert "Alice" in result["content"][0]["text"]
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [alice.open_id]
    assert calls[0].token_kind == "user"


def test_the_redirect_back_carries_the_state_and_the_issuer(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    url = authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new(), state="xyz-1")
    location = approve(url, "bob")
    assert location.startswith(redirect_uri + "?")
    back = query_of(location)
    assert back["state"] == "xyz-1"
    assert back["iss"] == shared_gateway.url
    assert len(back["code"]) >= 40


def test_a_loopback_redirect_may_come_back_on_another_port(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, _ = _client(shared_http)
    elsewhere = f"http://127.0.0.1:{free_port()}/callback"
    with browser() as person:
        consent = open_consent(
            person, authorize_url(shared_gateway.url, client_id, elsewhere, Pkce.new())
        )
    assert "Test App" in consent.text


def test_a_wrong_verifier_is_refused_and_spends_the_code(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri, code, pkce = _code(shared_http, shared_gateway.url)
    wrong = exchange(shared_http, client_id, code, redirect_uri, Pkce.new().verifier)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    late = exchange(shared_http, client_id, code, redirect_uri, pkce.verifier)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


def test_a_wrong_redirect_uri_at_the_token_endpoint_is_refused(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri, code, pkce = _code(shared_http, shared_gateway.url)
    other = redirect_uri.replace("/callback", "/other")
    response = exchange(shared_http, client_id, code, other, pkce.verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_code_for_another_client_is_refused(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    _client_id, redirect_uri, code, pkce = _code(shared_http, shared_gateway.url)
    thief, _ = _client(shared_http)
    response = exchange(shared_http, thief, code, redirect_uri, pkce.verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_reused_code_is_refused_and_revokes_what_it_granted(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri, code, pkce = _code(shared_http, shared_gateway.url)
    first = exchange(shared_http, client_id, code, redirect_uri, pkce.verifier)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert shared_http.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200

    again = exchange(shared_http, client_id, code, redirect_uri, pkce.verifier)

    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert shared_http.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401
    renewed = refresh(shared_http, client_id, first.json()["refresh_token"])
    assert renewed.status_code == 400


def test_an_expired_code_is_refused(http: httpx.Client, oauth_gateway: GatewayServer) -> None:
    client_id, redirect_uri, code, pkce = _code(http, oauth_gateway.url)
    oauth_gateway.clock.advance(oauth_gateway.settings.oauth_code_ttl + 1)
    response = exchange(http, client_id, code, redirect_uri, pkce.verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_an_expired_access_token_is_401_and_a_refresh_rotates_the_pair(
    http: httpx.Client, oauth_gateway: GatewayServer
) -> None:
    grant = obtain_grant(http, oauth_gateway.url, "carol")
    oauth_gateway.clock.advance(oauth_gateway.settings.oauth_access_token_ttl + 1)

    expired = http.post("/mcp", json=INIT, headers=bearer(grant.access_token))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]

    renewed = refresh(http, grant.client_id, grant.refresh_token)
    assert renewed.status_code == 200, renewed.text
    fresh = renewed.json()
    assert fresh["refresh_token"] != grant.refresh_token
    assert http.post("/mcp", json=INIT, headers=bearer(fresh["access_token"])).status_code == 200


def test_a_replayed_refresh_token_revokes_the_whole_grant(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    grant = obtain_grant(shared_http, shared_gateway.url, "alice")
    rotated = refresh(shared_http, grant.client_id, grant.refresh_token).json()

    replay = refresh(shared_http, grant.client_id, grant.refresh_token)

    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    stolen = shared_http.post("/mcp", json=INIT, headers=bearer(rotated["access_token"]))
    assert stolen.status_code == 401
    assert refresh(shared_http, grant.client_id, rotated["refresh_token"]).status_code == 400


def test_a_resource_that_is_not_this_gateway_is_refused_at_authorize(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    url = authorize_url(
        shared_gateway.url,
        client_id,
        redirect_uri,
        Pkce.new(),
        resource="https://evil.example/mcp",
    )
    response = shared_http.get(url)
    assert response.status_code == 302
    back = query_of(response.headers["location"])
    assert back["error"] == "invalid_target"
    assert response.headers["location"].startswith(redirect_uri)


def test_a_token_for_the_sse_resource_is_refused_on_mcp(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    grant = obtain_grant(
        shared_http, shared_gateway.url, "bob", resource=f"{shared_gateway.url}/sse"
    )
    response = shared_http.post("/mcp", json=INIT, headers=bearer(grant.access_token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    with shared_http.stream("GET", "/sse", headers=bearer(grant.access_token)) as stream:
        assert stream.status_code == 200


def test_the_token_endpoint_refuses_another_resource_than_the_grants(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri, code, pkce = _code(shared_http, shared_gateway.url)
    response = exchange(
        shared_http, client_id, code, redirect_uri, pkce.verifier, resource="https://evil.example"
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"


@pytest.mark.parametrize(
    ("client_id", "redirect"),
    [("lgc_unknown", "http://127.0.0.1:5000/cb"), (None, "https://evil.example/steal")],
)
def test_an_unknown_client_or_redirect_gets_a_page_never_a_redirect(
    shared_http: httpx.Client,
    shared_gateway: GatewayServer,
    client_id: str | None,
    redirect: str,
) -> None:
    known, _ = _client(shared_http)
    url = authorize_url(shared_gateway.url, client_id or known, redirect, Pkce.new())
    response = shared_http.get(url)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "authorization_invalid" in response.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"state": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
def test_a_request_without_pkce_s256_or_state_goes_back_with_an_error(
    shared_http: httpx.Client,
    shared_gateway: GatewayServer,
    change: dict[str, str | None],
    error: str,
) -> None:
    client_id, redirect_uri = _client(shared_http)
    url = authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new(), **change)  # type: ignore[arg-type]
    response = shared_http.get(url)
    assert response.status_code == 302
    back = query_of(response.headers["location"])
    assert back["error"] == error
    assert back["iss"] == shared_gateway.url


def test_a_repeated_parameter_is_refused(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    url = authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new())
    response = shared_http.get(url + f"&client_id={client_id}")
    assert response.status_code == 400 and "location" not in response.headers


def test_denying_consent_sends_access_denied_back(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    with browser() as person:
        consent = open_consent(
            person, authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new())
        )
        denied = decide(person, consent, "deny")
    assert denied.status_code == 302
    assert query_of(denied.headers["location"])["error"] == "access_denied"


def test_a_feishu_login_finished_in_another_browser_issues_nothing(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    with browser() as attacker:
        consent = open_consent(
            attacker, authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new())
        )
        feishu_url = decide(attacker, consent, "approve").headers["location"]
    with browser() as victim:
        feishu = victim.get(f"{feishu_url}&emulator_user=alice")
        landing = victim.get(feishu.headers["location"])
    assert landing.status_code == 403
    assert "other_browser" in landing.text
    assert "location" not in landing.headers


def test_a_consent_form_posted_from_another_site_or_browser_is_refused(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    url = authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new())
    with browser() as person:
        consent = open_consent(person, url)
        assert consent.headers["x-frame-options"] == "DENY"
        request_id = consent.text.split('name="request" value="')[1].split('"')[0]
        forged = person.post(
            f"{shared_gateway.url}/authorize",
            data={"request": request_id, "decision": "approve"},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        without_cookie = shared_http.post(
            "/authorize", data={"request": request_id, "decision": "approve"}
        )
        assert without_cookie.status_code == 403
        still_good = decide(person, consent, "approve")
        assert still_good.status_code == 302


def test_revoking_a_refresh_token_ends_the_grant_and_unknown_tokens_are_fine(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    grant = obtain_grant(shared_http, shared_gateway.url, "alice")
    response = shared_http.post(
        "/revoke", data={"token": grant.refresh_token, "client_id": grant.client_id}
    )
    assert response.status_code == 200
    assert (
        shared_http.post("/mcp", json=INIT, headers=bearer(grant.access_token)).status_code == 401
    )
    assert refresh(shared_http, grant.client_id, grant.refresh_token).status_code == 400
    assert shared_http.post("/revoke", data={"token": "lga_nothing"}).status_code == 200


def test_revoking_an_access_token_leaves_the_refresh_token(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    grant = obtain_grant(shared_http, shared_gateway.url, "bob")
    assert shared_http.post("/revoke", data={"token": grant.access_token}).status_code == 200
    assert (
        shared_http.post("/mcp", json=INIT, headers=bearer(grant.access_token)).status_code == 401
    )
    assert refresh(shared_http, grant.client_id, grant.refresh_token).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        (
            {"data": {"grant_type": "authorization_code", "client_id": "lgc_x"}},
            401,
            "invalid_client",
        ),
        ({"json": {"grant_type": "refresh_token"}}, 400, "invalid_request"),
        ({"content": b"client_id=a&client_id=b"}, 400, "invalid_request"),
    ],
)
def test_the_token_endpoint_refuses_malformed_requests(
    shared_http: httpx.Client, kwargs: dict[str, object], status: int, error: str
) -> None:
    headers = (
        {"Content-Type": "application/x-www-form-urlencoded"} if "content" in kwargs else None
    )
    response = shared_http.post("/token", headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["error"] == error


def test_an_unsupported_grant_type_is_refused(shared_http: httpx.Client) -> None:
    client_id, _ = _client(shared_http)
    response = shared_http.post(
        "/token", data={"grant_type": "client_credentials", "client_id": client_id}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_audit_lines_name_grants_and_revocations_without_secrets(
    shared_http: httpx.Client, shared_gateway: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="larkgate")
    grant = obtain_grant(shared_http, shared_gateway.url, "carol")
    shared_http.post("/revoke", data={"token": grant.refresh_token})

    audit = [r.getMessage() for r in caplog.records if r.name == "larkgate.authserver.audit"]
    assert any(line.startswith("grant issued") for line in audit)
    assert any(line.startswith("refresh token revoked") for line in audit)
    # The emulator plays Feishu and may log what it likes; the gateway's own lines may not.
    gateway_lines = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("larkgate.emulator")
    )
    assert grant.access_token not in gateway_lines
    assert grant.refresh_token not in gateway_lines
    assert "ou_carol" not in gateway_lines


def test_the_token_endpoint_is_rate_limited(
    start_gateway: object,
) -> None:
    gateway = start_gateway(mcp_auth="oauth", auth_rate_limit=3)  # type: ignore[operator]
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as client:
        answers = [client.post("/token", data={"grant_type": "x"}) for _ in range(10)]
    assert 429 in [a.status_code for a in answers]


def test_a_user_completes_the_feishu_login_for_the_code(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    with browser() as person:
        consent = open_consent(
            person, authorize_url(shared_gateway.url, client_id, redirect_uri, Pkce.new())
        )
        feishu_url = decide(person, consent, "approve").headers["location"]
        assert feishu_url.startswith(shared_gateway.settings.accounts_base_url)
        location = feishu_login(person, feishu_url, "alice")
    assert "code" in query_of(location)


def test_a_client_with_one_redirect_uri_may_leave_it_out_of_both_requests(
    shared_http: httpx.Client, shared_gateway: GatewayServer
) -> None:
    client_id, redirect_uri = _client(shared_http)
    pkce = Pkce.new()
    url = authorize_url(shared_gateway.url, client_id, None, pkce)  # type: ignore[arg-type]
    location = approve(url, "bob")
    assert location.startswith(redirect_uri)
    response = shared_http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": query_of(location)["code"],
            "code_verifier": pkce.verifier,
        },
    )
    assert response.status_code == 200, response.text
