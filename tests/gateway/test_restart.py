"""`larkgate serve` as a real process: shutdown, SIGKILL and restart leave no stray children;
a second gateway on the same data directory, or one with a bad listen address, is refused
before it touches anything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from larkgate.emulator import RunningEmulator
from support import LARK_MCP_CLI, free_port, lark_mcp_under, login_link_in, play_browser_login

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t"}},
}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "im_v1_chat_list", "arguments": {"params": {"page_size": 5}}},
}


class ServeProcess:
    def __init__(self, data_dir: Path, emulator: RunningEmulator, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(data_dir),
            "LARKGATE_APP_ID": emulator.state.config.app_id,
            "LARKGATE_APP_SECRET": emulator.state.config.app_secret,
            "LARKGATE_OPEN_BASE_URL": emulator.url,
            "LARKGATE_ACCOUNTS_BASE_URL": emulator.url,
            "LARKGATE_PUBLIC_URL": self.url,
            "LARKGATE_PORT": str(port),
            "LARKGATE_DATA_DIR": str(data_dir),
            "LARKGATE_LARK_MCP_CLI": str(LARK_MCP_CLI),
            "LARKGATE_WARM_SPARES": "1",
            "LARKGATE_STOP_GRACE": "2",
            # These tests log in through the link a session shows, not through OAuth.
            "LARKGATE_MCP_AUTH": "login_link",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "larkgate.cli", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "gateway exited at start"
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not become healthy")

    def lark_mcp_children(self) -> list[psutil.Process]:
        return lark_mcp_under(self.env["LARKGATE_DATA_DIR"])

    def stop(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(30)


@pytest.fixture
def serve(tmp_path: Path, emulator: RunningEmulator) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "data", emulator, free_port())
    yield process
    if process.process is not None and process.process.poll() is None:
        process.stop(signal.SIGKILL)
    for child in process.lark_mcp_children():
        child.kill()


def _login_and_call(url: str, user: str) -> str:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        init = http.post("/mcp", json=INIT, headers=ACCEPT)
        session_id = init.headers["mcp-session-id"]
        play_browser_login(login_link_in(init.json()["result"]["instructions"]), user)
        reply = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
        assert reply.status_code == 200
        assert user.capitalize() in reply.json()["result"]["content"][0]["text"]
        return session_id


def test_sigterm_stops_every_child(serve: ServeProcess) -> None:
    serve.start()
    _login_and_call(serve.url, "alice")
    assert len(serve.lark_mcp_children()) >= 2  # the default child and alice's

    serve.stop(signal.SIGTERM)

    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert serve.process is not None and serve.process.returncode in (0, -signal.SIGTERM)
    assert serve.lark_mcp_children() == []


def test_after_sigkill_the_children_leave_and_a_restart_keeps_the_user(
    serve: ServeProcess,
) -> None:
    serve.start()
    session_id = _login_and_call(serve.url, "alice")
    orphans = {p.pid for p in serve.lark_mcp_children()}
    assert orphans

    serve.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while {p.pid for p in serve.lark_mcp_children()} & orphans:
        assert time.monotonic() < deadline, "children outlived the killed gateway"
        time.sleep(0.1)
    serve.start()

    with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
        reply = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    assert reply.status_code == 200
    result = reply.json()["result"]
    assert not result.get("isError"), result
    assert "Alice" in result["content"][0]["text"]


def test_a_restart_stops_children_a_previous_run_left_running(serve: ServeProcess) -> None:
    serve.start()
    _login_and_call(serve.url, "alice")
    leftover = serve.lark_mcp_children()[0]
    # A stopped child cannot notice the gateway's death by itself, so only the restarted
    # gateway's clean-up of the children its store lists can end it.
    leftover.suspend()
    try:
        serve.stop(signal.SIGKILL)
        assert leftover.is_running()
        serve.start()
        leftover.wait(30)
    finally:
        if leftover.is_running():
            leftover.kill()


def _second_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "larkgate.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_gateway_on_the_same_data_dir_exits_and_leaves_the_first_alone(
    serve: ServeProcess,
) -> None:
    serve.start()
    assert serve.process is not None
    data_dir = Path(serve.env["LARKGATE_DATA_DIR"]).resolve()
    deadline = time.monotonic() + 30
    while len(serve.lark_mcp_children()) < 2:  # the default child and the warm spare
        assert time.monotonic() < deadline, "the warm spare never started"
        time.sleep(0.1)
    children = {p.pid for p in serve.lark_mcp_children()}
    store_before = (data_dir / "larkgate.db").stat().st_mtime_ns

    # The very command that once stopped every child of the first gateway: same data
    # directory, same port.
    second = _second_serve(serve.env)

    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"another gateway (pid {serve.process.pid}) serves from {data_dir}" in lines[0]
    assert "LARKGATE_DATA_DIR" in lines[0]
    assert {p.pid for p in serve.lark_mcp_children()} == children
    assert (data_dir / "larkgate.db").stat().st_mtime_ns == store_before
    assert (data_dir / "serve.lock").read_text().split()[0] == str(serve.process.pid)
    tools = httpx.get(f"{serve.url}/tools", timeout=30, trust_env=False)
    assert tools.status_code == 200 and tools.json()["tools"]

    # A gateway killed outright leaves no lock behind: the next one starts.
    serve.stop(signal.SIGKILL)
    serve.start()
    assert (data_dir / "serve.lock").read_text().split()[0] == str(serve.process.pid)


def test_an_invalid_host_stops_serve_with_one_line_before_any_child_starts(
    serve: ServeProcess,
) -> None:
    done = _second_serve({**serve.env, "LARKGATE_HOST": "0.0.0.0x"})

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LARKGATE_HOST" in lines[0] and "0.0.0.0x" in lines[0]
    assert serve.lark_mcp_children() == []
    assert not Path(serve.env["LARKGATE_DATA_DIR"]).exists()


def test_a_port_in_use_stops_serve_with_one_line_naming_the_port(serve: ServeProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", serve.port))
        taken.listen()

        done = _second_serve(serve.env)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LARKGATE_PORT" in lines[0] and str(serve.port) in lines[0]
    assert serve.lark_mcp_children() == []
