"""The gateway side by side with the single-user bridges people put in front of lark-mcp.

Same run, same users, same tool call as latency.py, with three more paths per user:

  supergateway  `supergateway --stdio "<lark-mcp -m stdio>" --port P` (npm), its defaults
  mcp-proxy     `mcp-proxy --port P -- <lark-mcp -m stdio>` (PyPI), its defaults
  child-sse     lark-mcp's own SSE mode (`-m sse`), the token as Bearer on GET /sse: the
                floor for a gateway that would keep one SSE connection per user child

Neither passes a per-user token, so each user gets one instance of each, running lark-mcp
with that user's token in its environment and the node flags the gateway gives its children
(--max-old-space-size=<child_heap_mb>, and child_v8_flags if set). supergateway has no
listen-address option; it is started with benchmarks/loopback_only.cjs preloaded so that it
binds 127.0.0.1 only. Both are installed on first use into a throwaway directory
(--bridges-dir, default under /tmp), never into the repository.

Up to 10 users every path runs at once. Above 10 users (or with --staged) four lark-mcp per
user stop fitting in memory, so the fronts take turns (_stages.py): the gateway stage (child
direct, gateway /mcp, gateway /sse), then supergateway, then mcp-proxy, then child-sse, each
stage with only its own processes running. A bridge stage measures child direct beside it on
the gateway stage's children if memory allows keeping them up; otherwise it is compared with
the gateway stage's floor, marked † in the table. A stage that would not fit in the memory
available is refused, with the figures, rather than started.

  .venv/bin/python benchmarks/bridges.py                   # 1 and 10 users, ~4 min
  .venv/bin/python benchmarks/bridges.py --users 1,20,100  # 20 and 100 staged, ~25 min
  .venv/bin/python benchmarks/bridges.py --users 2 --staged --rounds 1 --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from _clients import SseSession
from _procs import ProcessSet, Started, free_port
from _report import describe_busy, machine_busy, markdown_table, rss_mib, save_json, spread
from _stack import BENCH_DIR, EMULATOR_APP, LARK_MCP_CLI, Emulator, emulator_token, machine_facts
from _stages import (
    CHILD_MIB,
    MemoryBudget,
    measure_staged,
    measured_stages,
    staged_latency_table,
    staged_memory_table,
    staged_notes,
)
from latency import (
    MODE_NAMES,
    SETUP_CONCURRENCY,
    BenchUser,
    Route,
    build_parser,
    gateway_settings,
    latency_table,
    measure,
)

from larkgate.config import Settings

SUPERGATEWAY_VERSION = "4.0.0"
MCP_PROXY_VERSION = "0.13.0"
BRIDGE_MODES = {
    **MODE_NAMES,
    "supergateway": "supergateway (SSE)",
    "mcp-proxy": "mcp-proxy (SSE)",
    "child-sse": "child direct, SSE mode",
}
EXTRA_MODES = ("supergateway", "mcp-proxy", "child-sse")
START_TIMEOUT = 90.0
STAGED_ABOVE = 10


def supergateway_entry(bridges_dir: Path) -> Path:
    home = bridges_dir / "supergateway"
    entry = home / "node_modules/supergateway/dist/index.js"
    if not entry.exists():
        print(f"[bench] installing supergateway {SUPERGATEWAY_VERSION} into {home}")
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *("npm", "install", "--prefix", str(home), "--ignore-scripts", "--no-audit"),
                *("--no-fund", "--loglevel=error", f"supergateway@{SUPERGATEWAY_VERSION}"),
            ],
            check=True,
        )
    return entry


def mcp_proxy_program(bridges_dir: Path) -> Path:
    venv = bridges_dir / "mcp-proxy"
    program = venv / "bin/mcp-proxy"
    if not program.exists():
        print(f"[bench] installing mcp-proxy {MCP_PROXY_VERSION} into {venv}")
        python = shutil.which("python3") or sys.executable
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/pip"), "install", "--quiet", f"mcp-proxy=={MCP_PROXY_VERSION}"],
            check=True,
        )
    return program


def lark_mcp_argv(emulator: Emulator, transport: str, node_flags: list[str]) -> list[str]:
    """lark-mcp as the gateway runs it, with the same node flags; the token comes separately."""
    return [
        "node",
        *node_flags,
        str(LARK_MCP_CLI),
        "mcp",
        "-d",
        emulator.url,
        "-m",
        transport,
        "--token-mode",
        "user_access_token",
        "-t",
        "preset.default",
        "-l",
        "en",
        "-c",
        "snake",
    ]


class Bridges:
    """Per user: a supergateway, an mcp-proxy and a lark-mcp in SSE mode, added as routes."""

    def __init__(self, bridges_dir: Path, modes: list[str], node_flags: list[str]) -> None:
        self.modes = [m for m in EXTRA_MODES if m in modes]
        self.node_flags = node_flags
        self._supergateway = supergateway_entry(bridges_dir) if "supergateway" in modes else None
        self._mcp_proxy = mcp_proxy_program(bridges_dir) if "mcp-proxy" in modes else None
        self.started: dict[str, list[Started]] = {m: [] for m in EXTRA_MODES}

    async def attach(
        self,
        http: httpx.AsyncClient,
        emulator: Emulator,
        procs: ProcessSet,
        work: Path,
        users: list[BenchUser],
        modes: Sequence[str] | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        """Start each mode's instance for every user, a few at a time, checking ``budget``."""
        for mode in self.modes if modes is None else modes:
            for first in range(0, len(users), SETUP_CONCURRENCY):
                if budget is not None:
                    budget.check(mode, len(users) - first)
                batch = users[first : first + SETUP_CONCURRENCY]
                await asyncio.gather(
                    *(self._attach_one(http, emulator, procs, work, u, mode) for u in batch)
                )

    async def _attach_one(
        self,
        http: httpx.AsyncClient,
        emulator: Emulator,
        procs: ProcessSet,
        work: Path,
        user: BenchUser,
        mode: str,
    ) -> None:
        token = await emulator_token(http, emulator, user.login)
        started, port = self._start(procs, work, user, mode, token, emulator)
        self.started[mode].append(started)
        # lark-mcp's own SSE mode takes the user's token from the GET /sse request.
        bearer = {"Authorization": f"Bearer {token}"} if mode == "child-sse" else {}
        user.routes[mode] = await self._connect(http, started, port, bearer)

    async def stop(self, procs: ProcessSet, users: list[BenchUser], mode: str) -> None:
        """Close the users' sessions with ``mode``, then stop its processes, all at once."""
        for user in users:
            route = user.routes.pop(mode, None)
            if route is not None:
                await route.client.close()
        started, self.started[mode] = self.started[mode], []
        await asyncio.gather(*(asyncio.to_thread(procs.stop, s) for s in started))

    def _start(
        self,
        procs: ProcessSet,
        work: Path,
        user: BenchUser,
        mode: str,
        token: str,
        emulator: Emulator,
    ) -> tuple[Started, int]:
        home = work / "bridges" / f"{mode}-{user.login}"
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        child = lark_mcp_argv(emulator, "stdio", self.node_flags)
        secrets = {
            "APP_ID": EMULATOR_APP.app_id,
            "APP_SECRET": EMULATOR_APP.app_secret,
            "USER_ACCESS_TOKEN": token,
        }
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "LANG": "C.UTF-8"}
        if mode == "child-sse":
            argv = lark_mcp_argv(emulator, "sse", self.node_flags)
            argv += ["--host", "127.0.0.1", "-p", str(port)]
            # As the gateway starts its children: a placeholder token, the real one per request.
            env.update(secrets, USER_ACCESS_TOKEN="larkgate-per-request")
        elif mode == "supergateway":
            assert self._supergateway is not None
            preload = str(BENCH_DIR / "loopback_only.cjs")
            argv = ["node", "--require", preload, str(self._supergateway)]
            argv += ["--stdio", shlex.join(child), "--port", str(port)]
            env.update(secrets)
        else:
            assert self._mcp_proxy is not None
            argv = [str(self._mcp_proxy), "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--cwd", str(home), "-e", "HOME", str(home)]
            for name, value in secrets.items():
                argv += ["-e", name, value]
            argv += ["--", *child]
        return procs.start(f"{mode}-{user.login}", argv, env=env, cwd=home), port

    async def _connect(
        self, http: httpx.AsyncClient, started: Started, port: int, headers: dict[str, str]
    ) -> Route:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            if not started.alive():
                raise RuntimeError(f"{started.name} exited:\n{started.log_tail()}")
            try:
                url = f"http://127.0.0.1:{port}"
                session = await SseSession(http, url, headers=headers).open(timeout=60)
                break
            except (httpx.HTTPError, OSError):
                if asyncio.get_running_loop().time() > deadline:
                    tail = started.log_tail()
                    raise RuntimeError(f"{started.name} did not answer:\n{tail}") from None
                await asyncio.sleep(0.2)
        if started.name.startswith("child-sse"):
            return Route(session, None, started.pid)
        return Route(session, started.pid, lark_mcp_pid(started))


def lark_mcp_pid(started: Started) -> int:
    """The lark-mcp a bridge runs (supergateway's own command line names it too)."""
    for proc in started.descendants():
        try:
            if proc.name() == "node" and any("lark-mcp" in a for a in proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    raise RuntimeError(f"{started.name} runs no lark-mcp child")


def memory_table(results: dict[str, Any], idle: dict[str, dict[str, Any]]) -> str:
    rows = []
    for run in results["runs"]:
        for load, modes in run["loads"].items():
            for mode, m in modes.items():
                if mode in ("direct", "child-sse"):
                    continue
                proxy = m["proxy_peak_rss_mib"]
                per_user = "1 for all users" if mode in ("streamable", "sse") else "1 per user"
                rows.append(
                    [
                        run["users"],
                        load,
                        results["mode_names"][mode],
                        per_user,
                        idle.get(mode, {}).get("median", math.nan),
                        proxy["median"],
                        proxy["median"] * (1 if mode in ("streamable", "sse") else proxy["n"]),
                        m["child_peak_rss_mib"]["median"],
                    ]
                )
    header = [
        "users",
        "load",
        "path",
        "proxy processes",
        "proxy RSS idle",
        "proxy RSS peak (each)",
        "proxy RSS peak (all users)",
        "child RSS peak (median)",
    ]
    return markdown_table(header, rows)


def child_node_flags(args: argparse.Namespace) -> list[str]:
    """The node flags the gateway gives its children in this run: heap cap, then V8 flags."""
    settings = gateway_settings(args, 1)
    heap_mb = settings.get("child_heap_mb", Settings.model_fields["child_heap_mb"].default)
    # A --setting value is text; the gateway reads a list setting as JSON.
    given = settings.get("child_v8_flags")
    v8_flags = Settings().child_v8_flags if given is None else json.loads(str(given))
    return [f"--max-old-space-size={heap_mb}", *(str(flag) for flag in v8_flags)]


def main() -> None:
    parser = build_parser(__doc__)
    parser.set_defaults(users="1,10", modes=",".join(BRIDGE_MODES))
    parser.add_argument(
        "--bridges-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "larkgate-bench-bridges",
        help="where supergateway and mcp-proxy are installed on first use",
    )
    parser.add_argument(
        "--staged",
        action="store_true",
        help=f"one front at a time at every user count (done above {STAGED_ABOVE} users anyway)",
    )
    parser.add_argument(
        "--stage-child-mib",
        type=float,
        default=CHILD_MIB,
        help=f"staged: memory (USS, MiB) budgeted per lark-mcp for a stage to fit [{CHILD_MIB:g}]",
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m in BRIDGE_MODES]
    node_flags = child_node_flags(args)
    bridges = Bridges(args.bridges_dir, modes, node_flags)
    budget = MemoryBudget(args.stage_child_mib)
    counts = sorted({int(n) for n in args.users.split(",") if n.strip()})
    staged = [n for n in counts if args.staged or n > STAGED_ABOVE]
    together = [n for n in counts if n not in staged]
    idle: dict[str, dict[str, Any]] = {}

    async def attach(*parts: Any) -> None:
        await bridges.attach(*parts)
        await asyncio.sleep(2)
        for mode, started in bridges.started.items():
            idle[mode] = spread([rss_mib(psutil.Process(s.pid)) for s in started if s.alive()])

    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-bridges-"))
    try:
        if together:
            some = argparse.Namespace(**{**vars(args), "users": ",".join(map(str, together))})
            results = asyncio.run(measure(some, work, BRIDGE_MODES, attach, children_per_user=4))
        else:
            results = {"machine": machine_facts(), "busy_before": machine_busy(), "runs": []}
            results.update(skipped=[], mode_names=BRIDGE_MODES)
        results["args"] = vars(args)
        results["staged_runs"] = []
        if staged:
            results["stage_budget_mib"] = budget.describe()
            runs = asyncio.run(measure_staged(args, work / "staged", staged, bridges, budget))
            results["staged_runs"] = runs
            results["busy_after"] = machine_busy()
    finally:
        if args.keep:
            print(f"[bench] data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["bridge_versions"] = {
        "supergateway": SUPERGATEWAY_VERSION,
        "mcp-proxy": MCP_PROXY_VERSION,
    }
    results["bridge_child_node_flags"] = node_flags
    results["bridge_idle_rss_mib"] = idle
    if results["runs"]:
        print("\n### Latency per tools/call: gateway and bridges in front of the same lark-mcp\n")
        print(latency_table(results))
        print("\n### Memory of what sits in front of lark-mcp (MiB)\n")
        print(memory_table(results, idle))
    if any(measured_stages(run) for run in results["staged_runs"]):
        print("\n### Latency per tools/call, staged: one front at a time\n")
        print(staged_latency_table(results))
        print("\n### Memory per stage (MiB)\n")
        print(staged_memory_table(results))
    notes = staged_notes(results) if staged else []
    notes.append(
        f"lark-mcp behind the bridges and in SSE mode runs as `node {shlex.join(node_flags)}`, "
        "with the node flags the gateway gives its children"
    )
    notes.append(describe_busy(results))
    print("\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\nJSON: {save_json('bridges', results)}")


if __name__ == "__main__":
    main()
