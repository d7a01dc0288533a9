"""The system under test, as separate processes: the Feishu emulator and `larkgate serve`.

The gateway runs as its own process (so its RSS and CPU are its own) with settings from
environment variables, exactly as an operator would start it, pointed at the emulator.
The benchmark reads the gateway's store read-only to learn which child serves which user, and
gets a token of that user from the emulator, so that it can call the same child directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
from _procs import ProcessSet, Started, free_port

from larkgate.emulator import EmulatorConfig

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
LARK_MCP_CLI = REPO / "node_modules/@larksuiteoapi/lark-mcp/dist/cli.js"
EMULATOR_APP = EmulatorConfig()


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    started: Started | None = None,
) -> None:
    """Poll ``check()`` until true; on failure raise with the process's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started is not None and not started.alive():
            raise RuntimeError(
                f"{started.name} exited while waiting for {what}:\n{started.log_tail()}"
            )
        try:
            if await check():
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        await asyncio.sleep(0.1)
    tail = started.log_tail() if started is not None else ""
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}\n{tail}")


@dataclass
class Emulator:
    started: Started
    url: str


async def emulator_token(http: httpx.AsyncClient, emulator: Emulator, login: str) -> str:
    """A fresh user access token for ``login``, from the emulator's own code flow.

    lark-mcp forwards whatever Bearer token it is given, so a token of the same user from a
    second grant calls Feishu exactly as the gateway's does.
    """
    redirect = "http://127.0.0.1:9/benchmark"
    authorize = await http.get(
        f"{emulator.url}/open-apis/authen/v1/authorize",
        params={
            "client_id": EMULATOR_APP.app_id,
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": "offline_access",
            "state": "benchmark",
            "emulator_user": login,
        },
    )
    code = parse_qs(urlsplit(authorize.headers["location"]).query)["code"][0]
    token = await http.post(
        f"{emulator.url}/open-apis/authen/v2/oauth/token",
        json={
            "grant_type": "authorization_code",
            "client_id": EMULATOR_APP.app_id,
            "client_secret": EMULATOR_APP.app_secret,
            "code": code,
            "redirect_uri": redirect,
        },
    )
    return str(token.json()["access_token"])


async def start_emulator(procs: ProcessSet, http: httpx.AsyncClient, users: int) -> Emulator:
    port = free_port()
    started = procs.start(
        "emulator",
        [
            sys.executable,
            str(BENCH_DIR / "emulator_server.py"),
            "--port",
            str(port),
            "--users",
            str(users),
        ],
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        return (await http.get(f"{url}/_emulator/health")).status_code == 200

    await wait_for(healthy, 30, "the emulator", started)
    return Emulator(started, url)


def _env_value(value: object) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


class GatewayProcess:
    """`larkgate serve` in front of the emulator, with its own data directory and key."""

    def __init__(
        self,
        procs: ProcessSet,
        emulator: Emulator,
        data_dir: Path,
        name: str = "gateway",
        extra_env: dict[str, str] | None = None,
        **settings: object,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        values: dict[str, object] = {
            "app_id": EMULATOR_APP.app_id,
            "app_secret": EMULATOR_APP.app_secret,
            "open_base_url": emulator.url,
            "accounts_base_url": emulator.url,
            "public_url": self.url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(data_dir),
            "lark_mcp_cli": str(LARK_MCP_CLI),
            # Every benchmark user logs in from 127.0.0.1; the per-address login limit is for
            # the internet, not for this.
            "auth_rate_limit": 100_000,
            **settings,
        }
        self.settings = values
        env = {k: v for k, v in os.environ.items() if not k.startswith("LARKGATE_")}
        env.update({f"LARKGATE_{k.upper()}": _env_value(v) for k, v in values.items()})
        env.update(extra_env or {})
        script = Path(sys.executable).parent / "larkgate"
        argv = (
            [str(script), "serve"]
            if script.exists()
            else [sys.executable, "-m", "larkgate.cli", "serve"]
        )
        self.started = procs.start(name, argv, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.started.pid

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any]:
        response = await http.get(f"{self.url}/health")
        body: dict[str, Any] = response.json()
        return body

    async def wait_ready(self, http: httpx.AsyncClient, timeout: float = 90) -> None:
        """Until the default child answers and no child is starting (spares are filled)."""
        spares = int(str(self.settings.get("warm_spares", 1)))

        async def settled() -> bool:
            health = await self.health(http)
            instances = health["instances"]
            full = instances["users"] + instances["spares"] >= instances["limit"]
            return (
                health["default_instance"] == "ready"
                and instances["starting"] == 0
                and (instances["spares"] >= spares or full)
            )

        await wait_for(settled, timeout, "the gateway and its spares", self.started)

    # -- what the gateway's store says (read-only) ------------------------------------------

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.data_dir / 'larkgate.db'}?mode=ro", uri=True)
        try:
            return list(db.execute(sql, args).fetchall())
        finally:
            db.close()

    def user_children(self) -> dict[str, tuple[int, int]]:
        """open_id -> (pid, port) of each user's child."""
        rows = self._query("SELECT pid, port, user_id FROM children WHERE user_id IS NOT NULL")
        return {str(user): (int(pid), int(port)) for pid, port, user in rows}

    def children(self) -> list[psutil.Process]:
        return [p for p in self.started.descendants() if _is_node(p)]


def _is_node(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "node"
    except psutil.Error:
        return False


def machine_facts() -> dict[str, object]:
    """What a reader needs to compare runs: cores, memory, versions, the commit measured."""
    import platform
    import subprocess

    def run(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=20)
        except OSError:
            return ""
        return done.stdout.strip()

    lark_pkg = LARK_MCP_CLI.parent.parent / "package.json"
    lark_version = json.loads(lark_pkg.read_text()).get("version") if lark_pkg.exists() else None
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "node": run("node", "--version"),
        "lark_mcp": lark_version,
        "commit": run("git", "rev-parse", "--short", "HEAD"),
        "dirty_tree": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
