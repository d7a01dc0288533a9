"""The authorize page and the code exchange, with Feishu's rules for codes and PKCE."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from larkgate.emulator import EmulatedUser, RunningEmulator
from larkgate.emulator.control_client import (
    DEFAULT_REDIRECT_URI,
    OAUTH_V2_PATH,
    EmulatorControl,
    pkce_pair,
)

APP_ID = "cli_emulator"
APP_SECRET = "emulator-secret"


def _code_from(response: httpx.Response) -> str:
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["location"]).query)["code"][0]


def _exchange(http: httpx.Client, code: str, **overrides: str) -> httpx.Response:
    fields = {
        "grant_type": "authorization_code",
        "client_id": APP_ID,
        "client_secret": APP_SECRET,
        "code": code,
        "redirect_uri": DEFAULT_REDIRECT_URI,
    } | overrides
    return http.post(OAUTH_V2_PATH, json=fields)


def test_code_flow_with_pkce_returns_flat_tokens(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser
) -> None:
    verifier, challenge = pkce_pair()
    code = _code_from(
        control.authorize("alice", scope="im:chat offline_access", code_challenge=challenge)
    )

    response = _exchange(http, code, code_verifier=verifier)

    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0
    assert str(body["access_token"]).startswith("u-")
    assert str(body["refresh_token"]).startswith("ur-")
    assert body["expires_in"] == 7200
    assert body["refresh_token_expires_in"] == 604800
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "im:chat offline_access"
    assert control.tokens(alice.open_id)["access_token"] == body["access_token"]


def test_state_is_echoed_byte_for_byte_and_omitted_when_absent(control: EmulatorControl) -> None:
    odd_state = "a b&c=d/é%20"
    with_state = control.authorize("bob", state=odd_state)
    without = control.authorize("bob")

    assert parse_qs(urlsplit(with_state.headers["location"]).query)["state"] == [odd_state]
    assert "state" not in parse_qs(urlsplit(without.headers["location"]).query)


def test_redirect_keeps_the_query_the_redirect_uri_already_had(
    control: EmulatorControl,
) -> None:
    response = control.authorize("alice", redirect_uri="http://127.0.0.1:9/cb?tenant=x")
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["tenant"] == ["x"]
    assert "code" in query


def test_wrong_verifier_is_refused_with_20049(
    control: EmulatorControl, http: httpx.Client
) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    code = _code_from(control.authorize("alice", code_challenge=challenge))

    response = _exchange(http, code, code_verifier=other_verifier)

    assert response.status_code == 400
    assert response.json()["code"] == 20049
    assert response.json()["error"] == "invalid_grant"


def test_missing_verifier_is_refused_when_a_challenge_was_sent(
    control: EmulatorControl, http: httpx.Client
) -> None:
    _, challenge = pkce_pair()
    code = _code_from(control.authorize("alice", code_challenge=challenge))
    assert _exchange(http, code).json()["code"] == 20049


def test_reused_code_is_refused(control: EmulatorControl, http: httpx.Client) -> None:
    code = _code_from(control.authorize("alice"))
    assert _exchange(http, code).status_code == 200

    again = _exchange(http, code)

    assert again.status_code == 400
    assert again.json()["code"] == 20003


def test_code_expires_after_code_ttl(control: EmulatorControl, http: httpx.Client) -> None:
    code = _code_from(control.authorize("alice"))
    control.advance_clock(301)

    response = _exchange(http, code)

    assert response.status_code == 400
    assert response.json()["code"] == 20004


def test_redirect_uri_must_match_byte_for_byte(
    control: EmulatorControl, http: httpx.Client
) -> None:
    code = _code_from(control.authorize("alice"))
    response = _exchange(http, code, redirect_uri=DEFAULT_REDIRECT_URI + "/")
    assert response.status_code == 400
    assert response.json()["code"] == 20071


def test_form_body_is_accepted(control: EmulatorControl, http: httpx.Client) -> None:
    verifier, challenge = pkce_pair()
    code = _code_from(control.authorize("carol", code_challenge=challenge))

    response = http.post(
        OAUTH_V2_PATH,
        data={
            "grant_type": "authorization_code",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "code": code,
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "code_verifier": verifier,
        },
    )

    assert response.status_code == 200
    assert response.json()["code"] == 0


def test_wrong_client_secret_is_invalid_client(
    control: EmulatorControl, http: httpx.Client
) -> None:
    code = _code_from(control.authorize("alice"))
    response = _exchange(http, code, client_secret="guess")
    assert response.status_code == 400
    assert response.json() | {"error_description": ""} == {
        "code": 20002,
        "error": "invalid_client",
        "error_description": "",
    }


def test_unknown_grant_type_and_missing_fields(http: httpx.Client) -> None:
    unknown = http.post(OAUTH_V2_PATH, json={"grant_type": "password"})
    missing = http.post(OAUTH_V2_PATH, json={"client_id": APP_ID})
    assert unknown.json()["code"] == 20024
    assert missing.json()["code"] == 20001


def test_without_offline_access_no_refresh_fields(control: EmulatorControl) -> None:
    body = control.login("alice", scope="im:chat")
    assert "refresh_token" not in body
    assert "refresh_token_expires_in" not in body
    assert body["scope"] == "im:chat"


def test_offline_access_switched_off_withholds_refresh_tokens(control: EmulatorControl) -> None:
    control.configure(grant_offline_access=False)
    body = control.login("alice", scope="im:chat offline_access")
    assert "refresh_token" not in body
    assert body["scope"] == "im:chat"


def test_v3_rejects_a_verifier_nobody_asked_for(
    control: EmulatorControl, http: httpx.Client
) -> None:
    verifier, _ = pkce_pair()
    v2_code = _code_from(control.authorize("alice"))
    v3_code = _code_from(control.authorize("alice"))
    fields = {
        "grant_type": "authorization_code",
        "client_id": APP_ID,
        "client_secret": APP_SECRET,
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "code_verifier": verifier,
    }

    v2 = http.post(OAUTH_V2_PATH, json=fields | {"code": v2_code})
    v3 = http.post("/oauth/v3/token", json=fields | {"code": v3_code})

    assert v2.status_code == 200
    assert v3.status_code == 400
    assert v3.json()["code"] == 20049


def test_login_page_lists_users_and_deny(http: httpx.Client) -> None:
    params = {"client_id": APP_ID, "response_type": "code", "redirect_uri": DEFAULT_REDIRECT_URI}
    page = http.get("/open-apis/authen/v1/authorize", params=params)
    assert page.status_code == 200
    assert "Log in to Feishu (emulator)" in page.text
    assert "emulator_user=ou_alice_" in page.text
    assert "emulator_deny=1" in page.text


def test_deny_redirects_with_access_denied(http: httpx.Client) -> None:
    params = {
        "client_id": APP_ID,
        "response_type": "code",
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "state": "s1",
        "emulator_deny": "1",
    }
    response = http.get("/open-apis/authen/v1/authorize", params=params)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query == {"error": ["access_denied"], "state": ["s1"]}


def test_unknown_client_id_gets_an_error_page(http: httpx.Client) -> None:
    params = {"client_id": "cli_other", "response_type": "code", "redirect_uri": "http://x/cb"}
    response = http.get("/open-apis/authen/v1/authorize", params=params)
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]


def test_codes_and_secrets_never_reach_the_call_record(
    emulator: RunningEmulator, control: EmulatorControl
) -> None:
    tokens = control.login("alice")
    recorded = repr(control.calls())
    assert str(tokens["access_token"]) not in recorded
    assert APP_SECRET not in recorded
    exchange = control.calls(OAUTH_V2_PATH)[0]
    assert exchange["token_kind"] == "code"
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["open_id"] == emulator.state.config.users[0].open_id
