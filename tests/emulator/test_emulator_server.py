"""Starting and stopping the emulator, its public names and its standalone entry point."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

import larkgate.emulator
from larkgate.emulator import EmulatorConfig, RunningEmulator
from larkgate.emulator.__main__ import main


def test_public_names_are_pinned() -> None:
    assert sorted(larkgate.emulator.__all__) == [
        "CallRecord",
        "Clock",
        "EmulatedUser",
        "EmulatorConfig",
        "EmulatorState",
        "RunningEmulator",
        "create_app",
    ]


def test_default_users_have_feishu_shaped_ids() -> None:
    users = EmulatorConfig().users
    assert [u.user_id for u in users] == ["alice", "bob", "carol"]
    assert all(u.open_id.startswith("ou_") and u.union_id.startswith("on_") for u in users)
    assert {u.tenant_key for u in users} == {"tenant_demo"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::"])
def test_non_loopback_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        RunningEmulator(host=host)
    assert main(["--host", host, "--port", "0"]) == 2


def test_start_waits_for_the_port_and_stop_frees_it() -> None:
    running = RunningEmulator().start()
    port = running.port
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", running.url)
        assert httpx.get(running.url + "/_emulator/health").json() == {"ok": True}
    finally:
        running.stop()
    running.stop()  # a second stop is harmless
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_reset_restores_config_clock_and_records(emulator: RunningEmulator) -> None:
    state = emulator.state
    state.config.grant_offline_access = False
    state.clock.advance(86400)
    httpx.get(emulator.url + "/open-apis/im/v1/chats")
    assert len(state.calls) == 1

    state.reset()

    assert state.config.grant_offline_access is True
    assert state.clock.offset == 0
    assert list(state.calls) == []


def test_config_passed_in_is_not_changed_at_runtime() -> None:
    config = EmulatorConfig()
    with RunningEmulator(config) as running:
        httpx.post(running.url + "/_emulator/config", json={"grant_offline_access": False})
        assert running.state.config.grant_offline_access is False
    assert config.grant_offline_access is True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_module_runs_standalone() -> None:
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "larkgate.emulator", "--host", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1)
                break
            except httpx.TransportError:
                assert child.poll() is None, "the standalone emulator exited"
                assert time.monotonic() < deadline, "it never accepted a connection"
                time.sleep(0.05)
        assert health.json() == {"ok": True}
    finally:
        child.terminate()
        child.wait(timeout=10)
