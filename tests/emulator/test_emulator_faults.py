"""Faults on demand, the rate limit and runtime settings."""

from __future__ import annotations

import time

import httpx
import pytest

from larkgate.emulator import EmulatedUser, RunningEmulator
from larkgate.emulator.control_client import OAUTH_V2_PATH, EmulatorControl

APP_ID = "cli_emulator"
APP_SECRET = "emulator-secret"


def _refresh(http: httpx.Client, refresh_token: object) -> httpx.Response:
    return http.post(
        OAUTH_V2_PATH,
        json={
            "grant_type": "refresh_token",
            "client_id": APP_ID,
            "client_secret": APP_SECRET,
            "refresh_token": refresh_token,
        },
    )


def test_token_faults_are_served_in_order_then_normal_service_resumes(
    control: EmulatorControl, http: httpx.Client
) -> None:
    refresh = control.login("alice")["refresh_token"]
    control.queue_faults(
        token=[
            {"status": 500, "code": 20050},
            {"status": 503, "code": 20072},
            {"status": 429, "code": 99991400},
        ]
    )

    answers = [_refresh(http, refresh) for _ in range(4)]

    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (500, 20050),
        (503, 20072),
        (429, 99991400),
        (200, 0),
    ]
    assert answers[0].json()["error"] == "server_error"
    assert answers[2].headers["x-ogw-ratelimit-reset"] == "1"
    # The faults answered before the token was looked at, so it was still fresh for the 4th.
    assert control.calls(OAUTH_V2_PATH)[-1]["code"] == 0


def test_openapi_faults_do_not_touch_token_calls(
    control: EmulatorControl, http: httpx.Client
) -> None:
    access = control.login("alice")["access_token"]
    control.queue_faults(openapi=[{"status": 400, "code": 99991677}])

    first = http.get("/open-apis/im/v1/chats", headers={"Authorization": f"Bearer {access}"})
    second = http.get("/open-apis/im/v1/chats", headers={"Authorization": f"Bearer {access}"})

    assert first.json()["code"] == 99991677
    assert second.json()["code"] == 0


def test_clear_drops_queued_faults(control: EmulatorControl, http: httpx.Client) -> None:
    refresh = control.login("alice")["refresh_token"]
    control.queue_faults(token=[{"status": 500, "code": 20050}])
    control.clear_faults()
    assert _refresh(http, refresh).status_code == 200


def test_hung_refresh_still_rotates_after_the_client_gave_up(
    emulator: RunningEmulator, control: EmulatorControl, alice: EmulatedUser
) -> None:
    refresh = control.login("alice")["refresh_token"]
    control.hang(0.3, paths="token")

    with httpx.Client(base_url=emulator.url, timeout=0.1) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            _refresh(impatient, refresh)
        not_hung = impatient.get("/open-apis/im/v1/chats")

    assert not_hung.status_code == 400  # answered at once: only token paths hang
    # Let the hung request finish here, so its record cannot land in the next test's log.
    deadline = time.monotonic() + 5
    while not any(c.grant_type == "refresh_token" for c in emulator.state.calls):
        assert time.monotonic() < deadline, "the hung refresh never finished"
        time.sleep(0.02)
    # Feishu did the work the client never heard about: the stored refresh token is now dead.
    assert control.tokens(alice.open_id)["refresh_count"] == 1
    control.clear_faults()


def test_rate_limit_answers_429_with_reset_header(
    control: EmulatorControl, http: httpx.Client
) -> None:
    access = control.login("alice")["access_token"]
    control.configure(rate_limit_per_second=3)
    headers = {"Authorization": f"Bearer {access}"}

    answers = [http.get("/open-apis/im/v1/chats", headers=headers) for _ in range(5)]

    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    limited = answers[3]
    assert limited.status_code == 429
    assert limited.json()["code"] == 99991400
    assert int(limited.headers["x-ogw-ratelimit-reset"]) >= 1
    control.advance_clock(1.1)
    assert http.get("/open-apis/im/v1/chats", headers=headers).status_code == 200


def test_rate_limit_per_minute_counts_token_calls(
    control: EmulatorControl, http: httpx.Client
) -> None:
    control.configure(rate_limit_per_minute=2)
    answers = [_refresh(http, "ur-made-up") for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 429]
    assert answers[2].json()["error"] == "too_many_requests"
    assert int(answers[2].headers["x-ogw-ratelimit-reset"]) > 1


def test_bad_control_requests_change_nothing(
    emulator: RunningEmulator, http: httpx.Client
) -> None:
    bad_config = http.post(
        "/_emulator/config", json={"grant_offline_access": False, "code_ttl": -1}
    )
    bad_fault = http.post("/_emulator/faults", json={"token": [{"status": 200, "code": 0}]})

    assert bad_config.status_code == 400
    assert bad_fault.status_code == 400
    assert emulator.state.config.grant_offline_access is True
    assert http.get("/_emulator/config").json()["code_ttl"] == 300


def test_clock_moves_only_forward(emulator: RunningEmulator, http: httpx.Client) -> None:
    before = emulator.state.clock.now()
    moved = http.post("/_emulator/clock", json={"advance": 3600}).json()
    backwards = http.post("/_emulator/clock", json={"advance": -5})
    assert moved["now"] >= before + 3600
    assert backwards.status_code == 400
