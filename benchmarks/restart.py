"""Restart to first successful call: how long logged-in users wait after the gateway restarts.

Runs the Feishu emulator in this process and `larkgate serve` as its own process, logs users
in over Streamable HTTP, then restarts the gateway, cleanly (SIGTERM) and by `kill -9`, and
measures from the moment the new process is spawned to the first successful tool call on an
old session (no new login), and to `/health` answering 200.

    .venv/bin/python benchmarks/restart.py [--users 2] [--rounds 3]

Prints a table and writes benchmarks/out/restart-<time>.json.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from _clients import LOGIN_FORM_FIELD

from larkgate.emulator import EmulatorConfig, RunningEmulator

REPO = Path(__file__).resolve().parent.parent
LARK_MCP_CLI = REPO / "node_modules/@larksuiteoapi/lark-mcp/dist/cli.js"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "b"}},
}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "im_v1_chat_list", "arguments": {"params": {"page_size": 5}}},
}
POLL = 0.02
LIMIT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "larkgate.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=REPO,
        )


def wait_health(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gateway exited while starting")
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL)
    raise RuntimeError("gateway did not become healthy")


def login(url: str, user: str) -> str:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        init = http.post("/mcp", json=INIT, headers=ACCEPT)
        session_id = init.headers["mcp-session-id"]
        text = init.json()["result"]["instructions"]
        link = text[text.index("http") :].split()[0]
        fields = LOGIN_FORM_FIELD.findall(http.get(link).text)  # the page, then its button
        pressed = http.post(
            "/oauth/start",
            data={name: html.unescape(value) for name, value in fields},
            headers={"Origin": url},
        )
        authorize = pressed.headers["location"]
        assert parse_qs(urlsplit(authorize).query)["state"]
        feishu = http.get(f"{authorize}&emulator_user={user}")
        assert http.get(feishu.headers["location"]).status_code == 200
        assert call_ok(http, session_id)
    return session_id


def call_ok(http: httpx.Client, session_id: str) -> bool:
    reply = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    if reply.status_code != 200:
        return False
    result = reply.json().get("result") or {}
    return not result.get("isError") and bool(result.get("content"))


def restart_once(
    env: dict[str, str],
    url: str,
    process: subprocess.Popen[bytes],
    how: str,
    session: str,
    log: Path,
) -> tuple[subprocess.Popen[bytes], dict[str, float]]:
    process.send_signal(signal.SIGTERM if how == "clean" else signal.SIGKILL)
    process.wait(60)
    spawned = time.monotonic()
    new = start(env, log)
    healthy = first_call = None
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        deadline = spawned + LIMIT
        while time.monotonic() < deadline and first_call is None:
            try:
                if healthy is None and http.get("/health").status_code == 200:
                    healthy = time.monotonic() - spawned
                if healthy is not None and call_ok(http, session):
                    first_call = time.monotonic() - spawned
            except httpx.HTTPError:
                pass
            time.sleep(POLL)
    if first_call is None or healthy is None:
        raise RuntimeError(f"no successful call within {LIMIT:g}s after a {how} restart")
    return new, {"health_s": healthy, "first_call_s": first_call}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    users = ["alice", "bob", "carol"][: max(1, min(3, args.users))]
    results: dict[str, list[dict[str, float]]] = {"clean": [], "kill9": []}
    with RunningEmulator(EmulatorConfig()) as emulator, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": tmp,
            "LARKGATE_APP_ID": emulator.state.config.app_id,
            "LARKGATE_APP_SECRET": emulator.state.config.app_secret,
            "LARKGATE_OPEN_BASE_URL": emulator.url,
            "LARKGATE_ACCOUNTS_BASE_URL": emulator.url,
            "LARKGATE_PUBLIC_URL": url,
            "LARKGATE_PORT": str(port),
            "LARKGATE_DATA_DIR": str(Path(tmp) / "data"),
            "LARKGATE_LARK_MCP_CLI": str(LARK_MCP_CLI),
            "LARKGATE_FEISHU_PROBE_INTERVAL": "0",
            "LARKGATE_MCP_AUTH": "login_link",
        }
        log = Path(tmp) / "serve.log"
        process = start(env, log)
        try:
            wait_health(url, process)
            sessions = [login(url, u) for u in users]
            for _ in range(args.rounds):
                for how in ("clean", "kill9"):
                    process, figures = restart_once(env, url, process, how, sessions[0], log)
                    results[how].append(figures)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    report: dict[str, Any] = {"users": len(users), "rounds": args.rounds, "runs": results}
    print(f"{'restart':<8} {'health p50':>11} {'first call p50':>15} {'first call max':>15}")
    for how, runs in results.items():
        health = statistics.median(r["health_s"] for r in runs)
        first = [r["first_call_s"] for r in runs]
        report[how] = {
            "health_p50_s": health,
            "first_call_p50_s": statistics.median(first),
            "first_call_max_s": max(first),
        }
        print(f"{how:<8} {health:>10.2f}s {statistics.median(first):>14.2f}s {max(first):>14.2f}s")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"restart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
