"""The /admin page in real headless Chromium: sign in, read it, look at it, act on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from ops_support import Seen, logged_in_session, wait_until
from playwright.sync_api import Browser
from png import png_size, read_png

from larkgate.emulator import RunningEmulator
from larkgate.userkey import user_key
from support import GatewayServer, chromium

ADMIN_TOKEN = "admin-token-for-the-browser-test"
HEADER_BLUE = (0x33, 0x70, 0xFF)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_admin_page_shows_instances_users_charts_and_stops_an_instance(
    start_gateway: Callable[..., GatewayServer],
    emulator: RunningEmulator,
    browser: Browser,
    tmp_path: Path,
) -> None:
    gateway = start_gateway(admin_token=ADMIN_TOKEN, monitor_interval=0.2, feishu_probe_interval=0)
    alice = emulator.state.config.find_user("alice")
    assert alice is not None
    alice_key = user_key(alice.open_id)
    session_id = logged_in_session(gateway.url, "alice", Seen())
    child = gateway.gateway.pool.child_of(alice.open_id)
    assert child is not None
    wait_until(
        lambda: (
            (s := gateway.app.state.ops.sampler.series_of(child.child_id)) and len(s.samples) >= 3
        ),
        what="a few samples of alice's instance",
    )

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{gateway.url}/admin")
    assert page.locator("input[name=token]").is_visible()
    page.fill("input[name=token]", "not-the-token-at-all-no")
    page.click("button[type=submit]")
    assert "not the admin token" in page.content(), page.locator(".error").inner_text()
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("button[type=submit]")

    row = page.locator(f'#instances tr[data-instance="{child.child_id}"]')
    assert row.is_visible()
    assert alice_key in row.inner_text() and "Alice" in row.inner_text()
    assert row.locator("svg polyline").count() == 2
    assert page.locator("#instances .default").count() == 1
    user_row = page.locator(f'#users tr[data-user="{alice_key}"]')
    assert "logged in" in user_row.inner_text()

    # The whole page, as a person sees it: wide, and far from blank (a blank page compresses
    # to almost nothing). Decoding pixels in Python is slow, so regions are taken as clips.
    shot = page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    width, height = png_size(shot)
    assert width == 1280 and height >= 900
    assert len(shot) > 20_000
    header = read_png(page.screenshot(clip={"x": 0, "y": 0, "width": 64, "height": 32}))
    assert header.pixel(20, 20) == HEADER_BLUE
    chart = read_png(row.locator("svg").first.screenshot())
    colours = {chart.pixel(x, y) for x in range(chart.width) for y in range(chart.height)}
    assert len(colours) > 3, "the memory chart is blank"
    assert any(b > r + 60 for r, _g, b in colours), "the memory chart has no blue line"

    # Stop alice's instance from the page; the pool lets it go, her next call starts another.
    row.locator("button", has_text="Stop").click()
    assert "Stopped instance" in page.locator("[role=status]").inner_text()
    assert gateway.gateway.pool.child_of(alice.open_id) is None
    assert page.locator(f'#instances tr[data-instance="{child.child_id}"]').count() == 0

    # End her sessions: her session id is unknown afterwards.
    page.locator(f'#users tr[data-user="{alice_key}"] button', has_text="End sessions").click()
    assert "Ended 1 session" in page.locator("[role=status]").inner_text()
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        gone = http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": session_id,
            },
        )
        assert gone.status_code == 404


def test_admin_forms_need_the_cookie_and_its_csrf_token_and_the_api_needs_the_token(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway(admin_token=ADMIN_TOKEN, feishu_probe_interval=0)
    logged_in_session(gateway.url, "alice", Seen())
    alice = emulator.state.config.find_user("alice")
    assert alice is not None
    child = gateway.gateway.pool.child_of(alice.open_id)
    assert child is not None
    stop = f"/admin/instances/{child.child_id}/stop"

    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        assert http.post(stop, data={"csrf": "x"}).status_code == 401  # no cookie
        assert http.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
        assert http.post(stop, data={"csrf": "forged"}).status_code == 403
        page = http.get("/admin").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        foreign = {"Origin": "https://evil.example"}
        assert http.post(stop, data={"csrf": csrf}, headers=foreign).status_code == 403
        assert gateway.gateway.pool.child_of(alice.open_id) is child

        api = f"/admin/api/instances/{child.child_id}/stop"
        assert http.get("/admin/api/status").status_code == 401  # a cookie is not enough
        wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}
        assert http.post(api, headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        status = http.get("/admin/api/status", headers=right).json()
        assert {i["id"] for i in status["instances"]} >= {child.child_id}
        assert http.post(api, headers=right).json()["stopped"] == child.child_id
        assert gateway.gateway.pool.child_of(alice.open_id) is None
        assert ADMIN_TOKEN not in page
