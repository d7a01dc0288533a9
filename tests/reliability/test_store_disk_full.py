"""The disk under the store fills up while people are using the gateway.

The data directory lives on a small tmpfs of its own (the suite runs as root on CI; where
mounting is not allowed the module is skipped and says so). Filling it makes every SQLite write
fail with "database or disk is full", as on a real full disk. People already logged in must
keep working, everything else must get a clear error instead of a 500, no process may be left
behind, and no login may be lost once space comes back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from larkgate.emulator import RunningEmulator
from support import GatewayServer

from .reliability_kit import (
    ACCEPT,
    INIT,
    call_chat_list,
    emulator_config,
    emulator_tokens,
    error_code,
    log_in,
    new_streamable_session,
    own_chat,
    report,
    result_text,
    running_gateway,
    unhandled_errors,
)

DISK_SIZE = "24m"


class SmallDisk:
    """A tmpfs mounted for the test; fill() takes every free byte, free() gives them back."""

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point
        self._fillers: list[Path] = []

    def fill(self) -> None:
        chunk = 1024 * 1024
        n = 0
        while chunk >= 512:
            filler = self.mount_point / f"filler-{n}"
            n += 1
            self._fillers.append(filler)
            try:
                with filler.open("wb") as f:
                    while True:
                        f.write(b"\0" * chunk)
                        f.flush()
            except OSError:
                chunk //= 8
        assert os.statvfs(self.mount_point).f_bavail == 0

    def free(self) -> None:
        for filler in self._fillers:
            filler.unlink(missing_ok=True)
        self._fillers.clear()

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        self.fill()
        try:
            yield
        finally:
            self.free()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    mount_point = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the store: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(mount_point)
    finally:
        _kill_processes_under(mount_point)
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cwd"]):
        try:
            if (proc.info["cwd"] or "").startswith(str(path)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill_processes_under(path: Path) -> None:
    for proc in _processes_under(path):
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(emulator_config(2)) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(disk: SmallDisk, emulator: RunningEmulator) -> Iterator[GatewayServer]:
    with running_gateway(disk.mount_point / "data", emulator, health_interval=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def alfa(gateway: GatewayServer) -> str:
    session_id = log_in(gateway.url, "alfa")
    assert own_chat("alfa") in result_text(_call(gateway, session_id))
    return session_id


def _call(gateway: GatewayServer, session_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=gateway.url, timeout=120, trust_env=False) as http:
        response = call_chat_list(http, session_id)
    assert response.status_code == 200, f"HTTP {response.status_code}: {response.text[:300]}"
    reply: dict[str, Any] = response.json()
    return reply


def _clear_refusal(response: httpx.Response) -> str | None:
    """What is wrong with an answer, or None if it worked or is a clear error (a stable code)."""
    if response.status_code < 400:
        return None
    if response.status_code == 500:
        return f"HTTP 500: {response.text[:120]!r}"
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        code = error_code(body) or (body.get("error") or {}).get("code")
        return None if code else f"no error code in {response.text[:120]!r}"
    return None if "Error code" in response.text else f"no error code in {response.text[:120]!r}"


def _alfa_id(emulator: RunningEmulator) -> str:
    person = emulator.state.config.find_user("alfa")
    assert person is not None
    return person.open_id


def test_with_the_disk_full_people_logged_in_keep_working(
    disk: SmallDisk, gateway: GatewayServer, alfa: str
) -> None:
    with disk.full():
        reply = _call(gateway, alfa)
        health = httpx.get(f"{gateway.url}/health", timeout=30, trust_env=False)
    assert own_chat("alfa") in result_text(reply)
    assert health.status_code == 200


def test_with_the_disk_full_new_sessions_and_logins_get_a_clear_error_not_500(
    disk: SmallDisk, gateway: GatewayServer, alfa: str
) -> None:
    # A fresh connection a request: uvicorn closes one that carried an unhandled exception.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=gateway.url, timeout=60, trust_env=False, limits=fresh) as http:
        _, waiting_link = new_streamable_session(http)
        with disk.full(), unhandled_errors() as unhandled:
            answers = {
                "POST /mcp initialize": http.post("/mcp", json=INIT, headers=ACCEPT),
                "GET /sse": _first_bytes_of_sse(http),
                "GET /oauth/start": http.get(waiting_link),
            }
        after = http.post("/mcp", json=INIT, headers=ACCEPT)

    problems = {what: p for what, r in answers.items() if (p := _clear_refusal(r)) is not None}
    report(f"disk full: {len(answers)} session/login requests, unclear answers: {problems}")
    assert problems == {}
    assert unhandled.summary() == []
    assert after.status_code == 200


def _first_bytes_of_sse(http: httpx.Client) -> httpx.Response:
    with http.stream("GET", "/sse") as stream:
        if stream.status_code == 200:
            stream.close()
        else:
            stream.read()
        return stream


def test_a_renewal_while_the_disk_is_full_is_kept_and_saved_once_space_returns(
    disk: SmallDisk, gateway: GatewayServer, emulator: RunningEmulator, alfa: str
) -> None:
    gateway.clock.advance(7300)
    with disk.full():
        during = _call(gateway, alfa)
    after = _call(gateway, alfa)

    report(f"disk full: renewal due -> {error_code(during) or 'answered'}: {during.get('error')}")
    assert error_code(during) in (None, "feishu_try_again"), during
    assert own_chat("alfa") in result_text(after)
    loaded = gateway.gateway.store.load_tokens(_alfa_id(emulator))
    assert loaded is not None
    current = emulator_tokens(emulator, _alfa_id(emulator))
    assert loaded[0].refresh_token == current["refresh_token"]
    assert loaded[0].access_token == current["access_token"]


def test_a_child_crashing_while_the_disk_is_full_is_replaced_without_leaking_a_process(
    disk: SmallDisk, gateway: GatewayServer, emulator: RunningEmulator, alfa: str
) -> None:
    assert own_chat("alfa") in result_text(_call(gateway, alfa))
    pool = gateway.gateway.pool
    child = pool.child_of(_alfa_id(emulator))
    assert child is not None
    with unhandled_errors() as unhandled:
        with disk.full():
            os.kill(child.pid, signal.SIGKILL)
            time.sleep(1.0)  # the pool notices the exit and starts a replacement
            with httpx.Client(base_url=gateway.url, timeout=120, trust_env=False) as http:
                during = call_chat_list(http, alfa)
        after = _call(gateway, alfa)
        time.sleep(1.0)

    data_dir = gateway.settings.data_dir
    running = {p.pid for p in _processes_under(data_dir) if p.status() != psutil.STATUS_ZOMBIE}
    known = {c.pid for c in pool.children()}
    report(
        f"disk full: child crashed -> call answered HTTP {during.status_code} "
        f"{during.text[:100]!r}; lark-mcp processes {sorted(running)}, known to the pool "
        f"{sorted(known)}; unhandled: {unhandled.summary()}"
    )
    assert own_chat("alfa") in result_text(after)
    assert _clear_refusal(during) is None, during.text
    assert running <= known, f"processes nobody tracks: {sorted(running - known)}"
    assert unhandled.summary() == []
