"""Per-call latency the gateway adds, and the memory of the gateway and of its children.

One run, all on 127.0.0.1: the Feishu emulator and `larkgate serve` as separate processes,
N emulated users logged in through the real OAuth flow, each with a Streamable HTTP session
and an HTTP+SSE session. Every user calls ``im_v1_chat_list`` (which reaches the emulator),
one call in flight per user, in three ways that take turns round by round:

  direct      POST to the user's own lark-mcp child with a token of that user (the floor)
  streamable  through the gateway's /mcp
  sse         through the gateway's /sse + /messages

Two load shapes: ``closed`` (every user calls back to back, which saturates 2 cores at 20
users) and ``paced`` (calls arrive at random times at --rate calls/s over all users).
RSS of the gateway and of each child is taken idle, sampled under load, and after it.

  .venv/bin/python benchmarks/latency.py                   # 1 and 20 users, ~3 min
  .venv/bin/python benchmarks/latency.py --users 1,20,50 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _clients import (
    DirectChild,
    DirectSseChild,
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
    PeakSampler,
    Samples,
    cpu_seconds,
    describe_busy,
    machine_busy,
    markdown_table,
    rss_mib,
    run_load,
    save_json,
    spread,
    uss_mib,
)
from _stack import Emulator, GatewayProcess, emulator_token, machine_facts, start_emulator
from emulator_server import bench_login

from larkgate.emulator.config import make_user

MODES = ("direct", "streamable", "sse")
MODE_NAMES = {"direct": "child direct", "streamable": "gateway /mcp", "sse": "gateway /sse"}
CHATS_PATH = "/open-apis/im/v1/chats"
FIT_IN_GIB = 24
SETUP_CONCURRENCY = 4


Client = StreamableSession | SseSession | DirectChild


@dataclass
class Route:
    """One way for a user to reach lark-mcp: the client, the proxy in front, the child behind."""

    client: Client
    front_pid: int | None
    child_pid: int


@dataclass
class BenchUser:
    login: str
    open_id: str
    name: str
    streamable: StreamableSession
    sse: SseSession
    child_pid: int = 0
    first_call_s: float = math.nan
    routes: dict[str, Route] = field(default_factory=dict)


@dataclass
class ModeResult:
    samples: Samples = field(default_factory=Samples)
    front_cpu_s: float = 0.0
    children_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0
    gateway_peak_mib: float = 0.0
    front_peaks_mib: dict[int, float] = field(default_factory=dict)
    child_peaks_mib: dict[int, float] = field(default_factory=dict)
    feishu_calls: int = 0
    feishu_not_as_caller: int = 0

    def merge(self, other: ModeResult) -> None:
        self.samples.add(other.samples)
        self.front_cpu_s += other.front_cpu_s
        self.children_cpu_s += other.children_cpu_s
        self.emulator_cpu_s += other.emulator_cpu_s
        self.gateway_peak_mib = max(self.gateway_peak_mib, other.gateway_peak_mib)
        for mine, theirs in (
            (self.front_peaks_mib, other.front_peaks_mib),
            (self.child_peaks_mib, other.child_peaks_mib),
        ):
            for pid, peak in theirs.items():
                mine[pid] = max(mine.get(pid, 0.0), peak)
        self.feishu_calls += other.feishu_calls
        self.feishu_not_as_caller += other.feishu_not_as_caller

    def summary(self) -> dict[str, Any]:
        summary = self.samples.summary()
        calls = max(1, self.feishu_calls)
        summary.update(
            proxy_cpu_ms_per_call=self.front_cpu_s / calls * 1000,
            child_cpu_ms_per_call=self.children_cpu_s / calls * 1000,
            emulator_cpu_ms_per_call=self.emulator_cpu_s / calls * 1000,
            gateway_peak_rss_mib=self.gateway_peak_mib,
            proxy_peak_rss_mib=spread(list(self.front_peaks_mib.values())),
            child_peak_rss_mib=spread(list(self.child_peaks_mib.values())),
            feishu_calls=self.feishu_calls,
            feishu_calls_not_as_caller=self.feishu_not_as_caller,
        )
        return summary


def build_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", default="1,20", help="comma-separated user counts [1,20]")
    parser.add_argument(
        "--loads",
        default="auto",
        help="closed, paced or both (comma-separated); auto: closed at 1 user, both above",
    )
    parser.add_argument("--rate", type=float, default=40.0, help="paced: calls/s, all users [40]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every path once")
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        help="closed: measured calls per user per path per round [150 at 1 user, else 15]",
    )
    parser.add_argument(
        "--paced-calls", type=int, default=10, help="paced: calls per user per path per round"
    )
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured calls per user per run")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of direct,streamable,sse")
    parser.add_argument("--warm-spares", type=int, default=1, help="gateway warm_spares [1]")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another gateway setting, e.g. child_heap_mb=192 (repeatable)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the gateway process only, e.g. PYTHONPATH=... (repeatable)",
    )
    parser.add_argument(
        "--child-mib",
        type=float,
        default=320.0,
        help="RSS to budget per child; user counts that do not fit in memory are skipped [320]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    return parser


def gateway_settings(args: argparse.Namespace, most_users: int) -> dict[str, object]:
    settings: dict[str, object] = {
        "warm_spares": args.warm_spares,
        # A spare counts against max_instances, and a newcomer arriving while a spare is still
        # starting evicts an idle user's child (see the report); leave room for the spares.
        "max_instances": max(20, most_users + args.warm_spares),
        "child_timeout": 60.0,
    }
    for item in args.setting:
        name, _, value = item.partition("=")
        settings[name.strip().lower()] = value
    return settings


def loads_for(args: argparse.Namespace, users: int) -> list[str]:
    if args.loads == "auto":
        return ["closed"] if users == 1 else ["paced", "closed"]
    return [load for load in args.loads.split(",") if load in ("closed", "paced")]


async def set_up_user(
    http: httpx.AsyncClient, gateway: GatewayProcess, index: int, gate: asyncio.Semaphore
) -> BenchUser:
    """Both sessions opened and logged in, and the first call made (which starts the child)."""
    login = bench_login(index)
    person = make_user(login)
    async with gate:
        # /mcp as the default settings serve it (OAuth 2.1 bearer); /sse with the login link.
        token = await oauth_access_token(gateway.url, login)
        streamable = await StreamableSession(http, gateway.url, token).open()
        sse = await SseSession(http, gateway.url).open()
        await play_browser_login(http, sse.instructions, login)
        user = BenchUser(login, person.open_id, person.name, streamable, sse)
        began = asyncio.get_running_loop().time()
        check_tool_reply(await streamable.call(tool_call(0)), person.name)
        user.first_call_s = asyncio.get_running_loop().time() - began
    return user


def gateway_child_transport(gateway: GatewayProcess) -> str:
    return str(gateway.settings.get("child_transport", "sse"))


async def attach_direct(
    http: httpx.AsyncClient, emulator: Emulator, gateway: GatewayProcess, users: list[BenchUser]
) -> None:
    children = gateway.user_children()
    for user in users:
        if user.open_id not in children:
            raise RuntimeError(f"{user.login} has no child any more (evicted or crashed?)")
        pid, port = children[user.open_id]
        token = await emulator_token(http, emulator, user.login)
        user.child_pid = pid
        direct: DirectChild | DirectSseChild
        if gateway_child_transport(gateway) == "sse":
            direct = DirectSseChild(http, f"http://127.0.0.1:{port}", token)
        else:
            direct = DirectChild(http, f"http://127.0.0.1:{port}/mcp", token)
        user.routes["direct"] = Route(direct, None, pid)
        user.routes["streamable"] = Route(user.streamable, gateway.pid, pid)
        user.routes["sse"] = Route(user.sse, gateway.pid, pid)


async def feishu_calls(http: httpx.AsyncClient, emulator: Emulator) -> list[dict[str, Any]]:
    """The chat-list calls the emulator saw since the last look; then it forgets them."""
    response = await http.get(
        f"{emulator.url}/_emulator/calls", params={"path_prefix": CHATS_PATH}
    )
    await http.post(f"{emulator.url}/_emulator/reset_calls")
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls


async def run_mode(
    http: httpx.AsyncClient,
    emulator: Emulator,
    gateway: GatewayProcess | None,
    users: list[BenchUser],
    mode: str,
    per_user: int,
    warmup: int,
    rate: float | None,
) -> ModeResult:
    """One path under one load; ``gateway`` None when no gateway runs beside it."""
    routes = [u.routes[mode] for u in users]
    fronts = [psutil.Process(pid) for pid in {r.front_pid for r in routes} if pid is not None]
    children = [psutil.Process(r.child_pid) for r in routes]
    emulator_proc = psutil.Process(emulator.started.pid)
    gateways = [psutil.Process(gateway.pid)] if gateway is not None else []
    await feishu_calls(http, emulator)

    def caller(user: BenchUser) -> Any:
        client = user.routes[mode].client

        async def call(seq: int) -> None:
            check_tool_reply(await client.call(tool_call(seq)), user.name)

        return call

    watched = [*gateways, *fronts, *children]
    before = (cpu_seconds(fronts), cpu_seconds(children), cpu_seconds([emulator_proc]))
    with PeakSampler(lambda: watched) as sampler:
        samples = await run_load([caller(u) for u in users], per_user, warmup, rate)
    after = (cpu_seconds(fronts), cpu_seconds(children), cpu_seconds([emulator_proc]))

    # Every call must have reached Feishu, as the user who made it, with a user token.
    seen = await feishu_calls(http, emulator)
    expected = Counter({u.open_id: per_user + warmup for u in users})
    got = Counter(c["open_id"] for c in seen)
    wrong = sum((got - expected).values()) + sum(c["token_kind"] != "user" for c in seen)
    return ModeResult(
        samples=samples,
        front_cpu_s=after[0] - before[0],
        children_cpu_s=after[1] - before[1],
        emulator_cpu_s=after[2] - before[2],
        gateway_peak_mib=sampler.peaks.get(gateway.pid, math.nan) if gateway else math.nan,
        front_peaks_mib={p.pid: sampler.peaks.get(p.pid, math.nan) for p in fronts},
        child_peaks_mib={p.pid: sampler.peaks.get(p.pid, math.nan) for p in children},
        feishu_calls=len(seen),
        feishu_not_as_caller=wrong,
    )


def memory_snapshot(gateway: GatewayProcess, users: list[BenchUser]) -> dict[str, Any]:
    children = [psutil.Process(u.child_pid) for u in users]
    gateway_proc = psutil.Process(gateway.pid)
    nodes = gateway.children()
    return {
        "gateway_rss_mib": rss_mib(gateway_proc),
        "gateway_uss_mib": uss_mib(gateway_proc),
        "child_rss_mib": spread([rss_mib(p) for p in children]),
        "child_uss_mib": spread([uss_mib(p) for p in children]),
        "all_children_rss_mib": sum(rss_mib(p) for p in nodes),
        "children_running": len(nodes),
    }


def fits_in_memory(args: argparse.Namespace, users: int, children_per_user: int) -> bool:
    need = (users * children_per_user + args.warm_spares + 1) * args.child_mib * MIB
    return need < psutil.virtual_memory().available * 0.9


AttachMore = Callable[
    [httpx.AsyncClient, Emulator, ProcessSet, Path, list[BenchUser]], Awaitable[None]
]


async def measure(
    args: argparse.Namespace,
    work: Path,
    known_modes: dict[str, str] = MODE_NAMES,
    attach_more: AttachMore | None = None,
    children_per_user: int = 1,
) -> dict[str, Any]:
    """The whole run; ``attach_more`` adds routes (other proxies) to newly set-up users."""
    counts = sorted({int(n) for n in args.users.split(",") if n.strip()})
    modes = [m for m in args.modes.split(",") if m in known_modes]
    procs = ProcessSet(work / "logs")
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "busy_before": machine_busy(),
        "args": vars(args),
        "runs": [],
        "skipped": [],
        "mode_names": known_modes,
    }
    async with load_client() as http:
        emulator = await start_emulator(procs, http, max(counts))
        extra_env = dict(item.partition("=")[::2] for item in args.gateway_env)
        gateway = GatewayProcess(
            procs,
            emulator,
            work / "data",
            extra_env=extra_env,
            **gateway_settings(args, max(counts)),
        )
        results["gateway_settings"] = gateway.settings
        await gateway.wait_ready(http)
        await asyncio.sleep(1)
        results["gateway_idle_no_users"] = memory_snapshot(gateway, [])
        print(f"[bench] gateway pid {gateway.pid} at {gateway.url}; emulator at {emulator.url}")

        users: list[BenchUser] = []
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        try:
            for count in counts:
                if not fits_in_memory(args, count, children_per_user):
                    print(f"[bench] skipping {count} users: {args.child_mib:g} MiB each won't fit")
                    results["skipped"].append(count)
                    continue
                print(f"[bench] logging in users {len(users)}..{count - 1}, starting children")
                new = range(len(users), count)
                added = await asyncio.gather(*(set_up_user(http, gateway, i, gate) for i in new))
                users += added
                await attach_direct(http, emulator, gateway, users)
                if attach_more is not None:
                    await attach_more(http, emulator, procs, work, list(added))
                await gateway.wait_ready(http)
                await asyncio.sleep(2)
                run = await measure_count(args, http, emulator, gateway, users[:count], modes)
                results["runs"].append(run)
        finally:
            clients = {id(c): c for u in users for c in (u.sse, u.streamable)}
            clients.update({id(r.client): r.client for u in users for r in u.routes.values()})
            for client in clients.values():
                await client.close()
            results["busy_after"] = machine_busy()
            procs.stop_all()
    return results


async def measure_count(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    emulator: Emulator,
    gateway: GatewayProcess,
    users: list[BenchUser],
    modes: list[str],
    label: str = "",
) -> dict[str, Any]:
    count = len(users)
    run: dict[str, Any] = {"users": count, "idle_before": memory_snapshot(gateway, users)}
    run["first_call_ms_at_setup"] = spread([u.first_call_s * 1000 for u in users])
    run["loads"] = await measure_loads(args, http, emulator, gateway, users, modes, label)
    await asyncio.sleep(2)
    run["idle_after"] = memory_snapshot(gateway, users)
    return run


async def measure_loads(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    emulator: Emulator,
    gateway: GatewayProcess | None,
    users: list[BenchUser],
    modes: list[str],
    label: str = "",
) -> dict[str, dict[str, Any]]:
    """Each load shape, load -> path -> summary; the paths take turns round by round."""
    count = len(users)
    loads: dict[str, dict[str, Any]] = {}
    for load in loads_for(args, count):
        rate = args.rate if load == "paced" else None
        per_user = args.paced_calls if rate else (args.calls or (150 if count == 1 else 15))
        warmup = 1 if rate else args.warmup
        by_mode = {m: ModeResult() for m in modes}
        for round_no in range(args.rounds):
            turn = round_no % len(modes)
            for mode in modes[turn:] + modes[:turn]:
                got = await run_mode(http, emulator, gateway, users, mode, per_user, warmup, rate)
                by_mode[mode].merge(got)
            print(f"[bench] {count} users{label}, {load}: round {round_no + 1}/{args.rounds} done")
        loads[load] = {m: r.summary() for m, r in by_mode.items()}
    return loads


def latency_table(results: dict[str, Any]) -> str:
    rows = []
    for run in results["runs"]:
        for load, modes in run["loads"].items():
            floor = modes.get("direct")
            shape = "back to back" if load == "closed" else f"{results['args']['rate']:g}/s"
            for mode, m in modes.items():
                added = ["-", "-"]
                if floor and mode != "direct":
                    added = [
                        f"{m['p50_ms'] - floor['p50_ms']:+.1f}",
                        f"{m['p99_ms'] - floor['p99_ms']:+.1f}",
                    ]
                rows.append(
                    [
                        run["users"],
                        shape,
                        results["mode_names"][mode],
                        m["calls"],
                        m["errors"],
                        m["p50_ms"],
                        m["p99_ms"],
                        *added,
                        m["calls_per_s"],
                        f"{m['proxy_cpu_ms_per_call']:.2f}",
                        f"{m['child_cpu_ms_per_call']:.1f}",
                    ]
                )
    header = [
        "users",
        "load",
        "path",
        "calls",
        "errors",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "calls/s",
        "proxy CPU ms/call",
        "child CPU ms/call",
    ]
    return markdown_table(header, rows)


def memory_table(results: dict[str, Any]) -> str:
    idle = results["gateway_idle_no_users"]
    rows: list[list[object]] = [
        ["gateway", "no user yet (default child and spare up)", idle["gateway_rss_mib"], "", ""]
    ]
    for run in results["runs"]:
        n = run["users"]
        before, after = run["idle_before"], run["idle_after"]
        all_modes = [m for modes in run["loads"].values() for m in modes.values()]
        peak_gateway = max(m["gateway_peak_rss_mib"] for m in all_modes)
        peak_child = max(m["child_peak_rss_mib"]["max"] for m in all_modes)
        peak_child_median = max(m["child_peak_rss_mib"]["median"] for m in all_modes)
        b_rss, b_uss = before["child_rss_mib"], before["child_uss_mib"]
        a_rss, a_uss = after["child_rss_mib"], after["child_uss_mib"]
        rows += [
            ["gateway", f"{n} users logged in, idle", before["gateway_rss_mib"], "", ""],
            ["gateway", f"{n} users, peak under load", peak_gateway, "", ""],
            ["gateway", f"{n} users, after load", after["gateway_rss_mib"], "", ""],
            [
                "each user child",
                f"{n} users, after first call",
                b_rss["median"],
                b_rss["max"],
                b_uss["median"],
            ],
            ["each user child", f"{n} users, peak under load", peak_child_median, peak_child, ""],
            [
                "each user child",
                f"{n} users, after load",
                a_rss["median"],
                a_rss["max"],
                a_uss["median"],
            ],
        ]
        # USS is what one more child costs; RSS also counts the code all children share.
        run["users_fit_in_24gib"] = math.floor(
            (FIT_IN_GIB * 1024 - peak_gateway - peak_child) / max(a_uss["max"], 1.0)
        )
    return markdown_table(["process", "state", "RSS median", "RSS max", "USS median"], rows)


def main() -> None:
    args = build_parser(__doc__).parse_args()
    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-latency-"))
    try:
        results = asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"[bench] data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n### Latency per tools/call (im_v1_chat_list, reaching the emulator)\n")
    print(latency_table(results))
    print("\n### Memory (MiB)\n")
    print(memory_table(results))
    print()
    for run in results["runs"]:
        print(
            f"- {run['users']} users: about {run['users_fit_in_24gib']} children fit in "
            f"{FIT_IN_GIB} GiB (by the largest USS after load)"
        )
    print(f"- {describe_busy(results)}")
    print(f"\nJSON: {save_json('latency', results)}")


if __name__ == "__main__":
    main()
