"""How the gateway's own CPU and memory grow with open MCP sessions and with running children.

One run, all on 127.0.0.1: the Feishu emulator and `larkgate serve` as separate processes,
every call ``im_v1_chat_list`` (which reaches the emulator). Two parts, each on a gateway of
its own, started with warm_spares=0 so that the children are exactly the users':

  sessions   --session-users users log in and start their children; then 1, 10, 50, ...
             sessions are opened over them, half /mcp (OAuth bearer) and half /sse (login
             link), and the same --rate calls/s is spread over all open sessions
  instances  1, 5, 10, ... users, each with its own child and one session on each
             transport; the same --rate calls/s is spread over all users

At each size the gateway is first left idle (--idle-seconds: RSS and CPU with everything
open), then loaded (--seconds); CPU is the gateway process's own, in ms per second of wall
time (10 ms/s is 1 % of one core). The instances part also sums the children's RSS and USS.

  .venv/bin/python benchmarks/growth.py                     # full sizes, ~5 min
  .venv/bin/python benchmarks/growth.py --quick             # 1,10 sessions; 1,2 instances
  .venv/bin/python benchmarks/growth.py --instances 1,5,10,20,40 --png /tmp/growth.png

The plot needs matplotlib (`.venv/bin/pip install -e '.[bench]'`); without it the tables
are still printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from _clients import (
    SseSession,
    StreamableSession,
    check_tool_reply,
    load_client,
    oauth_access_token,
    play_browser_login,
    tool_call,
)
from _procs import ProcessSet
from _report import (
    MIB,
    Call,
    PeakSampler,
    cpu_seconds,
    describe_busy,
    machine_busy,
    markdown_table,
    rss_mib,
    run_steady,
    save_json,
    uss_mib,
)
from _stack import BENCH_DIR, Emulator, GatewayProcess, machine_facts, start_emulator
from emulator_server import bench_login
from latency import SETUP_CONCURRENCY, BenchUser, feishu_calls, set_up_user

from larkgate.emulator.config import make_user

FULL_SESSIONS = "1,10,50,100,200"
FULL_INSTANCES = "1,5,10,20"
QUICK_SESSIONS = "1,10"
QUICK_INSTANCES = "1,2"
DEFAULT_MAX_INSTANCES = 20
SESSION_SETUP_CONCURRENCY = 8
SETTLE_S = 2.0
INSTALL_PLOT = ".venv/bin/pip install -e '.[bench]'"

Client = StreamableSession | SseSession


@dataclass
class Caller:
    """One open session and the user it belongs to."""

    client: Client
    open_id: str
    name: str


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", help=f"open session counts [{FULL_SESSIONS}]")
    parser.add_argument("--instances", help=f"user children counts [{FULL_INSTANCES}]")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"for development: --sessions {QUICK_SESSIONS} --instances {QUICK_INSTANCES} and "
        "5 s windows, unless given",
    )
    parser.add_argument(
        "--session-users", type=int, default=5, help="users under the sessions [5]"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="calls/s at every size [20]")
    parser.add_argument("--seconds", type=float, help="seconds of load at each size [12]")
    parser.add_argument("--idle-seconds", type=float, help="seconds idle at each size [10]")
    parser.add_argument(
        "--child-mib",
        type=float,
        default=320.0,
        help="RSS to budget per child; counts that do not fit in memory are skipped [320]",
    )
    parser.add_argument(
        "--png",
        default=str(BENCH_DIR / "growth.png"),
        help="where to write the plot; empty for none [benchmarks/growth.png]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    args = parser.parse_args()
    window = 5.0 if args.quick else None
    args.sessions = args.sessions or (QUICK_SESSIONS if args.quick else FULL_SESSIONS)
    args.instances = args.instances or (QUICK_INSTANCES if args.quick else FULL_INSTANCES)
    args.seconds = args.seconds or window or 12.0
    args.idle_seconds = args.idle_seconds or window or 10.0
    return args


def sizes(text: str) -> list[int]:
    return sorted({int(n) for n in text.split(",") if n.strip()})


def fits_in_memory(children: int, child_mib: float) -> bool:
    # The default child comes on top of the users' children.
    return (children + 1) * child_mib * MIB < psutil.virtual_memory().available * 0.9


def mib_sum(values: Sequence[float]) -> float:
    return sum(v for v in values if not math.isnan(v))


async def cpu_per_second(procs: Sequence[psutil.Process], seconds: float) -> float:
    """CPU of ``procs`` over ``seconds`` of idling, in ms per second of wall time."""
    before, began = cpu_seconds(procs), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(procs) - before) / (time.perf_counter() - began) * 1000


async def measure_size(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    emulator: Emulator,
    gateway: GatewayProcess,
    callers: list[Caller],
) -> dict[str, Any]:
    """The gateway idle with everything open, then under --rate calls/s over ``callers``."""
    await gateway.wait_ready(http)
    await asyncio.sleep(SETTLE_S)
    gateway_proc = psutil.Process(gateway.pid)
    children = gateway.children()
    user_children = [psutil.Process(pid) for pid, _port in gateway.user_children().values()]

    figures: dict[str, Any] = {
        "gateway_cpu_ms_per_s_idle": await cpu_per_second([gateway_proc], args.idle_seconds),
        "gateway_rss_mib_idle": rss_mib(gateway_proc),
        "gateway_uss_mib_idle": uss_mib(gateway_proc),
        "children_running": len(children),
        "user_children": len(user_children),
        "user_children_rss_mib_idle": mib_sum([rss_mib(p) for p in user_children]),
        "user_children_uss_mib_idle": mib_sum([uss_mib(p) for p in user_children]),
    }

    await feishu_calls(http, emulator)
    sent: Counter[str] = Counter()

    def calling(caller: Caller) -> Call:
        async def call(seq: int) -> None:
            sent[caller.open_id] += 1
            check_tool_reply(await caller.client.call(tool_call(seq)), caller.name)

        return call

    before = cpu_seconds([gateway_proc]), cpu_seconds(children)
    with PeakSampler(lambda: [gateway_proc]) as sampler:
        samples = await run_steady([calling(c) for c in callers], args.rate, args.seconds)
    gateway_cpu = cpu_seconds([gateway_proc]) - before[0]
    children_cpu = cpu_seconds(children) - before[1]

    # Every call must have reached Feishu, as the user who made it, with a user token.
    seen = await feishu_calls(http, emulator)
    got = Counter(str(c["open_id"]) for c in seen)
    wrong = sum((got - sent).values()) + sum(c["token_kind"] != "user" for c in seen)
    summary = samples.summary()
    figures.update(
        calls=summary["calls"],
        errors=summary["errors"],
        first_errors=summary["first_errors"],
        calls_per_s=summary["calls_per_s"],
        p50_ms=summary["p50_ms"],
        p99_ms=summary["p99_ms"],
        gateway_cpu_ms_per_s_load=gateway_cpu / samples.wall * 1000,
        gateway_cpu_ms_per_call=gateway_cpu / max(1, len(seen)) * 1000,
        children_cpu_ms_per_s_load=children_cpu / samples.wall * 1000,
        gateway_rss_mib_peak=sampler.peaks.get(gateway.pid, math.nan),
        gateway_rss_mib_after=rss_mib(gateway_proc),
        user_children_rss_mib_after=mib_sum([rss_mib(p) for p in user_children]),
        user_children_after=len(gateway.user_children()),
        feishu_calls=len(seen),
        feishu_calls_not_as_caller=wrong,
    )
    return figures


# -- sessions: many sessions over a few users -------------------------------------------------


async def start_session_user(
    http: httpx.AsyncClient, gateway: GatewayProcess, index: int, gate: asyncio.Semaphore
) -> str:
    """Log the user in over /mcp and start their child; their OAuth access token."""
    login = bench_login(index)
    async with gate:
        token = await oauth_access_token(gateway.url, login)
        starter = await StreamableSession(http, gateway.url, token).open()
        check_tool_reply(await starter.call(tool_call(0)), make_user(login).name)
        await starter.close()
    return token


async def open_session(
    http: httpx.AsyncClient,
    gateway: GatewayProcess,
    tokens: list[str],
    number: int,
    gate: asyncio.Semaphore,
) -> Caller:
    """Session ``number``: even ones on /mcp, odd ones on /sse, two at a time per user."""
    index = number // 2 % len(tokens)
    login = bench_login(index)
    person = make_user(login)
    async with gate:
        client: Client
        if number % 2 == 0:
            client = await StreamableSession(http, gateway.url, tokens[index]).open()
        else:
            client = await SseSession(http, gateway.url).open()
            await play_browser_login(http, client.instructions, login)
        check_tool_reply(await client.call(tool_call(0)), person.name)
    return Caller(client, person.open_id, person.name)


async def sessions_part(
    args: argparse.Namespace,
    procs: ProcessSet,
    http: httpx.AsyncClient,
    emulator: Emulator,
    work: Path,
) -> dict[str, Any]:
    gateway = GatewayProcess(
        procs, emulator, work / "sessions", name="gateway-sessions", warm_spares=0
    )
    part: dict[str, Any] = {"gateway_settings": gateway.settings, "sizes": []}
    callers: list[Caller] = []
    try:
        await gateway.wait_ready(http)
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        tokens = await asyncio.gather(
            *(start_session_user(http, gateway, i, gate) for i in range(args.session_users))
        )
        await gateway.wait_ready(http)
        await asyncio.sleep(SETTLE_S)
        part["gateway_rss_mib_no_sessions"] = rss_mib(psutil.Process(gateway.pid))
        gate = asyncio.Semaphore(SESSION_SETUP_CONCURRENCY)
        for count in sizes(args.sessions):
            print(f"[bench] opening sessions {len(callers)}..{count - 1}")
            new = range(len(callers), count)
            callers += await asyncio.gather(
                *(open_session(http, gateway, tokens, n, gate) for n in new)
            )
            figures = await measure_size(args, http, emulator, gateway, callers)
            figures.update(
                sessions=count,
                mcp_sessions=sum(isinstance(c.client, StreamableSession) for c in callers),
                sse_sessions=sum(isinstance(c.client, SseSession) for c in callers),
            )
            part["sizes"].append(figures)
            print(f"[bench] {count} sessions measured")
    finally:
        for caller in callers:
            await caller.client.close()
        procs.stop(gateway.started)
    return part


# -- instances: one child per user ------------------------------------------------------------


async def instances_part(
    args: argparse.Namespace,
    procs: ProcessSet,
    http: httpx.AsyncClient,
    emulator: Emulator,
    work: Path,
) -> dict[str, Any]:
    counts = [n for n in sizes(args.instances) if fits_in_memory(n, args.child_mib)]
    skipped = [n for n in sizes(args.instances) if n not in counts]
    for count in skipped:
        print(f"[bench] skipping {count} instances: {args.child_mib:g} MiB each won't fit")
    gateway = GatewayProcess(
        procs,
        emulator,
        work / "instances",
        name="gateway-instances",
        warm_spares=0,
        max_instances=max([DEFAULT_MAX_INSTANCES, *counts]),
    )
    part: dict[str, Any] = {"gateway_settings": gateway.settings, "sizes": [], "skipped": skipped}
    users: list[BenchUser] = []
    try:
        await gateway.wait_ready(http)
        await asyncio.sleep(SETTLE_S)
        part["gateway_rss_mib_no_users"] = rss_mib(psutil.Process(gateway.pid))
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        for count in counts:
            print(f"[bench] logging in users {len(users)}..{count - 1}, starting children")
            new = range(len(users), count)
            users += await asyncio.gather(*(set_up_user(http, gateway, i, gate) for i in new))
            callers = [
                Caller(client, u.open_id, u.name)
                for u in users
                for client in (u.streamable, u.sse)
            ]
            figures = await measure_size(args, http, emulator, gateway, callers)
            figures["instances"] = count
            part["sizes"].append(figures)
            print(f"[bench] {count} instances measured")
    finally:
        for user in users:
            await user.streamable.close()
            await user.sse.close()
        procs.stop(gateway.started)
    return part


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    procs = ProcessSet(work / "logs")
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "busy_before": machine_busy(),
        "args": vars(args),
    }
    logins = max([args.session_users, *sizes(args.instances)])
    async with load_client() as http:
        try:
            emulator = await start_emulator(procs, http, logins)
            results["sessions"] = await sessions_part(args, procs, http, emulator, work)
            results["instances"] = await instances_part(args, procs, http, emulator, work)
        finally:
            results["busy_after"] = machine_busy()
            procs.stop_all()
    return results


# -- report -----------------------------------------------------------------------------------


def load_columns(size: dict[str, Any]) -> list[object]:
    return [
        size["calls"],
        size["errors"],
        size["p50_ms"],
        size["p99_ms"],
        size["gateway_cpu_ms_per_s_idle"],
        size["gateway_cpu_ms_per_s_load"],
        f"{size['gateway_cpu_ms_per_call']:.2f}",
        size["gateway_rss_mib_idle"],
        size["gateway_rss_mib_peak"],
    ]


LOAD_HEADER = [
    "calls",
    "errors",
    "p50 ms",
    "p99 ms",
    "CPU ms/s idle",
    "CPU ms/s load",
    "CPU ms/call",
    "RSS idle",
    "RSS peak",
]


def sessions_table(part: dict[str, Any]) -> str:
    rows = [
        [s["sessions"], f"{s['mcp_sessions']} + {s['sse_sessions']}", *load_columns(s)]
        for s in part["sizes"]
    ]
    return markdown_table(["sessions", "/mcp + /sse", *LOAD_HEADER], rows)


def instances_table(part: dict[str, Any]) -> str:
    rows = [
        [
            s["instances"],
            *load_columns(s),
            s["user_children_rss_mib_idle"],
            s["user_children_uss_mib_idle"],
        ]
        for s in part["sizes"]
    ]
    header = ["user children", *LOAD_HEADER, "children RSS sum", "children USS sum"]
    return markdown_table(header, rows)


def feishu_check(results: dict[str, Any]) -> str:
    wrong = sum(
        s["feishu_calls_not_as_caller"]
        for part in ("sessions", "instances")
        for s in results[part]["sizes"]
    )
    if wrong:
        return f"{wrong} calls reached Feishu not as their caller (see the JSON)"
    return "every call that reached Feishu did so as its caller, with a user token"


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Two panels, gateway CPU (left axis) and RSS (right axis) against each part's size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    rate = results["args"]["rate"]
    panels = [
        (
            "sessions",
            f"open MCP sessions, half /sse, over {results['args']['session_users']} users",
        ),
        ("instances", "user children (lark-mcp), one user each"),
    ]
    legend: list[Any] = []
    for axes, (part, label) in zip(figure.subplots(1, 2), panels, strict=True):
        measured = results[part]["sizes"]
        x = [s[part] for s in measured]
        memory = axes.twinx()
        lines = [
            (axes, "gateway_cpu_ms_per_s_load", "o-", "tab:blue", f"CPU, {rate:g} calls/s"),
            (axes, "gateway_cpu_ms_per_s_idle", "o--", "tab:blue", "CPU, idle"),
            (memory, "gateway_rss_mib_peak", "s-", "tab:orange", "RSS, peak under load"),
            (memory, "gateway_rss_mib_idle", "s--", "tab:orange", "RSS, idle"),
        ]
        for on, key, style, colour, name in lines:
            legend += on.plot(x, [s[key] for s in measured], style, color=colour, label=name)
        for on, unit, colour in (
            (axes, "CPU, ms/s", "tab:blue"),
            (memory, "RSS, MiB", "tab:orange"),
        ):
            values = [s[key] for o, key, *_ in lines if o is on for s in measured]
            on.set_ylim(0, max([1.0, *values]) * 1.3)
            on.set_ylabel(f"gateway {unit}", color=colour)
        axes.set_xticks(x)
        axes.set_xlabel(label)
    figure.legend(handles=legend[: len(lines)], loc="outside lower center", ncols=4, fontsize=8)
    FigureCanvasAgg(figure)
    figure.savefig(path)


def main() -> None:
    args = parse_args()
    no_matplotlib = importlib.util.find_spec("matplotlib") is None
    if args.png and no_matplotlib:
        print(f"[bench] matplotlib is not installed: tables only, no plot ({INSTALL_PLOT})")
    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-growth-"))
    try:
        results = asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"[bench] data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sessions, instances = results["sessions"], results["instances"]
    print(
        f"\n### Gateway CPU and memory by open sessions ({args.session_users} users, "
        f"{args.rate:g} calls/s in all; CPU ms/s, RSS MiB)\n"
    )
    print(sessions_table(sessions))
    print(
        f"\nGateway RSS with those users' children up and no session open: "
        f"{sessions['gateway_rss_mib_no_sessions']:.1f} MiB"
    )
    print(
        f"\n### Gateway CPU and memory by running children ({args.rate:g} calls/s in all; "
        "CPU ms/s, RSS MiB)\n"
    )
    print(instances_table(instances))
    print(f"\nGateway RSS with no user child: {instances['gateway_rss_mib_no_users']:.1f} MiB")
    print(f"\n- {feishu_check(results)}")
    print(f"- {describe_busy(results)}")
    print(f"\nJSON: {save_json('growth', results)}")
    if args.png and no_matplotlib:
        print(f"No plot: matplotlib is not installed ({INSTALL_PLOT})")
    elif args.png:
        write_plot(results, Path(args.png))
        print(f"Plot: {args.png}")


if __name__ == "__main__":
    main()
