"""The shipped deployment on this machine: PM2 runs the gateway, Caddy serves it over HTTPS,
and a real MCP client goes through https:// to a tool call that reaches the emulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from ops_support import CHAT_LIST, Seen, gateway_env, kill_all, login, wait_until

from larkgate.emulator import RunningEmulator
from support import REPO, free_port, lark_mcp_under, login_link_in, tool_text

PM2 = REPO / "node_modules/.bin/pm2"
CADDY = "caddy"


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture
def stack(tmp_path: Path, emulator: RunningEmulator) -> Iterator[dict[str, Any]]:
    """PM2 with the ecosystem file, and Caddy with the Caddyfile, all on loopback."""
    if shutil.which(CADDY) is None:
        pytest.fail("Caddy is not installed: apt-get install -y caddy")
    if not PM2.exists():
        pytest.fail("PM2 is not installed: npm ci")
    gateway_port, https_port = free_port(), free_port()
    public = f"https://localhost:{https_port}"
    env = gateway_env(
        tmp_path / "data",
        emulator,
        gateway_port,
        LARKGATE_PUBLIC_URL=public,
        LARKGATE_FEISHU_PROBE_INTERVAL="0",
        LARKGATE_HOME=str(REPO),
        LARKGATE_LOG_DIR=str(tmp_path / "logs"),
        LARKGATE_CONFIG=str(tmp_path / "none.toml"),
        PM2_HOME=str(tmp_path / "pm2"),
    )
    env.pop("LARKGATE_CONFIG")
    caddy_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "caddy"),
        "XDG_DATA_HOME": str(tmp_path / "caddy/data"),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy/config"),
        "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
        "LARKGATE_DOMAIN": "localhost",
        "LARKGATE_TLS": "internal",
        "LARKGATE_BIND": "127.0.0.1",
        "LARKGATE_HTTPS_PORT": str(https_port),
        "LARKGATE_HTTP_PORT": str(free_port()),
        "LARKGATE_UPSTREAM": f"127.0.0.1:{gateway_port}",
        "CADDY_GRACE_PERIOD": "2s",
    }
    caddy: subprocess.Popen[bytes] | None = None
    try:
        started = run([str(PM2), "start", "deploy/ecosystem.config.js"], env)
        assert started.returncode == 0, started.stdout + started.stderr
        wait_until(
            lambda: _ok(f"http://127.0.0.1:{gateway_port}/health", True),
            timeout=60,
            what="the gateway under PM2",
        )
        with (tmp_path / "caddy.log").open("wb") as caddy_log:
            caddy = subprocess.Popen(
                [CADDY, "run", "--config", "deploy/Caddyfile", "--adapter", "caddyfile"],
                env=caddy_env,
                cwd=REPO,
                stdout=caddy_log,
                stderr=subprocess.STDOUT,
            )
        root = tmp_path / "caddy/data/caddy/pki/authorities/local/root.crt"
        wait_until(root.exists, what="Caddy's local CA")
        context = ssl.create_default_context(cafile=str(root))
        wait_until(lambda: _ok(f"{public}/health", context), what="HTTPS through Caddy")
        yield {
            "public": public,
            "gateway": f"http://127.0.0.1:{gateway_port}",
            "tls": context,
            "env": env,
            "data_dir": str(tmp_path / "data"),
            "logs": tmp_path / "logs",
        }
    finally:
        if caddy is not None:
            caddy.send_signal(signal.SIGTERM)
            try:
                caddy.wait(30)
            except subprocess.TimeoutExpired:
                caddy.kill()
        run([str(PM2), "kill"], env)
        kill_all(lark_mcp_under(str(tmp_path / "data")))


def _ok(url: str, verify: Any) -> bool:
    try:
        return httpx.get(url, verify=verify, timeout=5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.anyio
async def test_mcp_client_through_caddy_https_to_the_gateway_under_pm2(
    stack: dict[str, Any], emulator: RunningEmulator
) -> None:
    public, tls = stack["public"], stack["tls"]
    alice = emulator.state.config.find_user("alice")
    assert alice is not None

    async with httpx2.AsyncClient(verify=tls, timeout=60) as http:
        transport = streamable_http_client(f"{public}/mcp", http_client=http)
        async with Client(transport) as client:
            link = login_link_in(client.instructions)
            assert link.startswith(f"{public}/oauth/start")
            page = login(link, "alice", Seen(), verify=tls)
            assert page.status_code == 200 and "Alice" in page.text
            emulator.state.calls.clear()
            result = await client.call_tool(CHAT_LIST, {"params": {"page_size": 5}})
    assert not result.is_error, tool_text(result)
    assert "Alice" in tool_text(result)
    calls = emulator.state.calls.matching("/open-apis/im/v1/chats")
    assert [c.open_id for c in calls] == [alice.open_id]

    # HTTP+SSE too: Caddy passes the event stream through unbuffered.
    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(verify=tls, headers=headers, timeout=timeout, auth=auth)

    async with Client(
        sse_client(f"{public}/sse", httpx_client_factory=factory), mode="legacy"
    ) as sse:
        tools = await sse.list_tools()
    assert CHAT_LIST in {t.name for t in tools.tools}

    # /metrics stays on loopback; the gateway and every child listen on loopback only.
    async with httpx.AsyncClient(verify=tls, trust_env=False) as http:
        assert (await http.get(f"{public}/metrics")).status_code == 404
        assert (await http.get(f"{stack['gateway']}/metrics")).status_code == 200
    gateway_pid = json.loads(run([str(PM2), "jlist"], stack["env"]).stdout)[0]["pid"]
    processes = [psutil.Process(gateway_pid), *lark_mcp_under(stack["data_dir"])]
    listening = [
        c.laddr.ip
        for p in processes
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 3 and set(listening) == {"127.0.0.1"}

    app = json.loads(run([str(PM2), "jlist"], stack["env"]).stdout)[0]
    assert app["name"] == "larkgate" and app["pm2_env"]["status"] == "online"
    assert int(app["pm2_env"]["max_memory_restart"]) > 0
    log_lines = (stack["logs"] / "larkgate.log").read_text().splitlines()
    assert log_lines and all(json.loads(line)["level"] for line in log_lines)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    unit = (REPO / "deploy/larkgate.service").read_text()
    assert "ExecStart=/opt/larkgate/.venv/bin/larkgate serve" in unit
    assert "KillMode=mixed" in unit and "NoNewPrivileges=yes" in unit
    local = tmp_path / "larkgate.service"
    local.write_text(unit.replace("/opt/larkgate", str(REPO)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
