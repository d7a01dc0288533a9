"""Refresh tokens: single use, rotation, the old access token's grace, expiry and the cap."""

from __future__ import annotations

import httpx

from larkgate.emulator import EmulatedUser, EmulatorConfig, RunningEmulator
from larkgate.emulator.control_client import OAUTH_V2_PATH, EmulatorControl

APP_ID = "cli_emulator"
APP_SECRET = "emulator-secret"
DAY = 86400


def _refresh(
    http: httpx.Client, refresh_token: object, path: str = OAUTH_V2_PATH
) -> httpx.Response:
    return http.post(
        path,
        json={
            "grant_type": "refresh_token",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "refresh_token": refresh_token,
        },
    )


def _chats(http: httpx.Client, access_token: object) -> dict[str, object]:
    response = http.get(
        "/open-apis/im/v1/chats", headers={"Authorization": f"Bearer {access_token}"}
    )
    body: dict[str, object] = response.json()
    return body


def test_refresh_rotates_and_reuse_answers_20073(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser
) -> None:
    first = control.login("alice", scope="im:chat offline_access")

    rotated = _refresh(http, first["refresh_token"])
    reused = _refresh(http, first["refresh_token"])

    assert rotated.status_code == 200
    new = rotated.json()
    assert new["refresh_token"] != first["refresh_token"]
    assert new["access_token"] != first["access_token"]
    assert new["scope"] == "im:chat offline_access"
    assert reused.status_code == 400
    assert reused.json()["code"] == 20073
    held = control.tokens(alice.open_id)
    assert held["refresh_token"] == new["refresh_token"]
    assert held["refresh_count"] == 1


def test_rotated_token_keeps_working(control: EmulatorControl, http: httpx.Client) -> None:
    token = control.login("bob")["refresh_token"]
    for _ in range(3):
        response = _refresh(http, token)
        assert response.status_code == 200
        token = response.json()["refresh_token"]


def test_old_access_token_lives_60s_after_refresh(
    control: EmulatorControl, http: httpx.Client
) -> None:
    first = control.login("alice")
    assert _refresh(http, first["refresh_token"]).status_code == 200

    control.advance_clock(59)
    within_grace = _chats(http, first["access_token"])
    control.advance_clock(2)
    after_grace = _chats(http, first["access_token"])

    assert within_grace["code"] == 0
    assert after_grace["code"] == 99991677


def test_access_token_expires_after_its_ttl(control: EmulatorControl, http: httpx.Client) -> None:
    access = control.login("alice")["access_token"]
    control.advance_clock(7200)
    assert _chats(http, access)["code"] == 99991677


def test_refresh_token_expires_after_its_ttl(control: EmulatorControl, http: httpx.Client) -> None:
    refresh = control.login("alice")["refresh_token"]
    control.advance_clock(7 * DAY + 1)
    response = _refresh(http, refresh)
    assert response.status_code == 400
    assert response.json()["code"] == 20037


def test_authorization_ends_365_days_after_login(
    control: EmulatorControl, http: httpx.Client
) -> None:
    refresh = control.login("alice")["refresh_token"]
    # Refresh every 6 days, as a diligent gateway would, until the year is over.
    for _ in range(60):
        control.advance_clock(6 * DAY)
        response = _refresh(http, refresh)
        assert response.status_code == 200
        refresh = response.json()["refresh_token"]
    # The last token may not outlive the authorization (less the real seconds the test took).
    assert 5 * DAY - 60 < response.json()["refresh_token_expires_in"] <= 5 * DAY

    control.advance_clock(5 * DAY)
    ended = _refresh(http, refresh)

    assert ended.status_code == 400
    assert ended.json()["code"] == 20037


def test_unknown_refresh_token_is_20026(http: httpx.Client, emulator: RunningEmulator) -> None:
    response = _refresh(http, "ur-made-up")
    assert response.status_code == 400
    assert response.json()["code"] == 20026


def test_revoked_user_gets_20064_and_99991668(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser
) -> None:
    tokens = control.login("alice")
    control.revoke(alice.open_id)

    assert _refresh(http, tokens["refresh_token"]).json()["code"] == 20064
    assert _chats(http, tokens["access_token"])["code"] == 99991668
    assert control.tokens(alice.open_id)["access_token"] is None


def test_refreshing_one_user_leaves_the_other_untouched(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser, bob: EmulatedUser
) -> None:
    alice_tokens = control.login("alice")
    control.login("bob")
    bob_before = control.tokens(bob.open_id)

    assert _refresh(http, alice_tokens["refresh_token"]).status_code == 200

    assert control.tokens(bob.open_id) == bob_before


def test_v3_refresh_behaves_like_v2(control: EmulatorControl, http: httpx.Client) -> None:
    refresh = control.login("alice")["refresh_token"]
    assert _refresh(http, refresh, "/oauth/v3/token").status_code == 200
    assert _refresh(http, refresh, "/oauth/v3/token").json()["code"] == 20073


def test_short_lived_config_in_process() -> None:
    config = EmulatorConfig(access_token_ttl=10, old_token_grace=0)
    with (
        RunningEmulator(config) as running,
        httpx.Client(base_url=running.url) as client,
        EmulatorControl(running.url) as control,
    ):
        tokens = control.login("carol")
        assert tokens["expires_in"] == 10
        assert _refresh(client, tokens["refresh_token"]).status_code == 200
        # With no grace the replaced access token dies at once.
        assert _chats(client, tokens["access_token"])["code"] == 99991677
