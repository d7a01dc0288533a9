"""Per-call latency the gateway adds, and the memory of the gateway and its children.

One run, all on 127.0.0.1: the Feishu emulator and `larkgate serve` as separate processes,
N emulated users logged in through the real OAuth flow, each with a Streamable HTTP session
and an HTTP+SSE session. Every user calls ``im_v1_chat_list`` (which reaches the emulator)
back to back, one call in flight per user, in three ways taking turns round by round:

- ``direct``: POST to the user's own lark-mcp child with the user's token (the floor);
- ``streamable``: through the gateway's ``/mcp``;
- ``sse``: through the gateway's ``/sse`` + ``/messages``.

RSS of the gateway and of each child is taken idle, sampled under load, and after it.

    .venv/bin/python benchmarks/latency.py                 # 1 and 20 users, ~1.5 min
    .venv/bin/python benchmarks/latency.py --users 1,20,100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _clients import (
    DirectChild,
    SseSession,
    StreamableSession,
    check_tool_reply,
    play_browser_login,
    tool_call,
)
from _procs import ProcessSet
from _report import (
    PeakSampler,
    Samples,
    closed_loop,
    cpu_seconds,
    markdown_table,
    rss_mib,
    save_json,
    spread,
    uss_mib,
)
from _stack import Emulator, GatewayProcess, machine_facts, start_emulator
from emulator_server import bench_login

from larkgate.emulator.config import make_user

MODES = ("direct", "streamable", "sse")
CHATS_PATH = "/open-apis/im/v1/chats"
FIT_IN_GIB = 24
SETUP_CONCURRENCY = 4


@dataclass
class BenchUser:
    login: str
    open_id: str
    name: str
    streamable: StreamableSession
    sse: SseSession
    direct: DirectChild | None = None
    child_pid: int = 0
    first_call_s: float = math.nan

    def client(self, mode: str) -> StreamableSession | SseSession | DirectChild:
        if mode == "streamable":
            return self.streamable
        if mode == "sse":
            return self.sse
        assert self.direct is not None
        return self.direct


@dataclass
class ModeResult:
    samples: Samples = field(default_factory=Samples)
    gateway_cpu_s: float = 0.0
    children_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0
    gateway_peak_mib: float = 0.0
    child_peaks_mib: dict[int, float] = field(default_factory=dict)
    feishu_calls: int = 0
    feishu_wrong_user: int = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--users", default="1,20", help="comma-separated user counts (default 1,20)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once")
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        help="measured calls per user per mode per round (default: 150 at 1 user, 20 above)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured calls per user per run")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of direct,streamable,sse")
    parser.add_argument("--warm-spares", type=int, default=1, help="gateway warm_spares setting")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other gateway setting, e.g. child_heap_mb=192 (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    return parser.parse_args()


def gateway_settings(args: argparse.Namespace, most_users: int) -> dict[str, object]:
    settings: dict[str, object] = {
        "warm_spares": args.warm_spares,
        # A spare counts against max_instances, and a newcomer arriving while a spare is
        # still starting evicts an idle user's child; leave room so no user is evicted.
        "max_instances": max(20, most_users + args.warm_spares),
        "child_timeout": 60.0,
    }
    for item in args.setting:
        name, _, value = item.partition("=")
        settings[name.strip().lower()] = value
    return settings


async def set_up_user(
    http: httpx.AsyncClient, gateway: GatewayProcess, index: int, gate: asyncio.Semaphore
) -> BenchUser:
    """Both sessions opened and logged in, and the first call made (which starts the child)."""
    login = bench_login(index)
    person = make_user(login)
    async with gate:
        streamable = await StreamableSession(http, gateway.url).open()
        await play_browser_login(http, streamable.instructions, login)
        sse = await SseSession(http, gateway.url).open()
        await play_browser_login(http, sse.instructions, login)
        user = BenchUser(login, person.open_id, person.name, streamable, sse)
        began = asyncio.get_running_loop().time()
        check_tool_reply(await streamable.call(tool_call(0)), person.name)
        user.first_call_s = asyncio.get_running_loop().time() - began
    return user


def attach_direct(
    http: httpx.AsyncClient, gateway: GatewayProcess, users: list[BenchUser]
) -> None:
    children = gateway.user_children()
    for user in users:
        if user.open_id not in children:
            raise RuntimeError(f"{user.login} has no child any more (evicted or crashed?)")
        pid, port = children[user.open_id]
        token = gateway.access_token(user.open_id)
        user.child_pid = pid
        user.direct = DirectChild(http, f"http://127.0.0.1:{port}/mcp", token)


async def feishu_calls(http: httpx.AsyncClient, emulator: Emulator) -> list[dict[str, Any]]:
    """The chat-list calls the emulator saw since the last look, then forgets them."""
    response = await http.get(
        f"{emulator.url}/_emulator/calls", params={"path_prefix": CHATS_PATH}
    )
    await http.post(f"{emulator.url}/_emulator/reset_calls")
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls


async def run_mode(
    http: httpx.AsyncClient,
    emulator: Emulator,
    gateway: GatewayProcess,
    users: list[BenchUser],
    mode: str,
    per_user: int,
    warmup: int,
) -> ModeResult:
    gateway_proc = psutil.Process(gateway.pid)
    children = [psutil.Process(u.child_pid) for u in users]
    emulator_proc = psutil.Process(emulator.started.pid)
    await feishu_calls(http, emulator)

    def caller(user: BenchUser) -> Any:
        client = user.client(mode)

        async def call(seq: int) -> None:
            check_tool_reply(await client.call(tool_call(seq)), user.name)

        return call

    before = (cpu_seconds([gateway_proc]), cpu_seconds(children), cpu_seconds([emulator_proc]))
    with PeakSampler(lambda: [gateway_proc, *children]) as sampler:
        samples = await closed_loop([caller(u) for u in users], per_user, warmup)
    after = (cpu_seconds([gateway_proc]), cpu_seconds(children), cpu_seconds([emulator_proc]))

    seen = await feishu_calls(http, emulator)
    expected = Counter({u.open_id: per_user + warmup for u in users})
    got = Counter(c["open_id"] for c in seen)
    return ModeResult(
        samples=samples,
        gateway_cpu_s=after[0] - before[0],
        children_cpu_s=after[1] - before[1],
        emulator_cpu_s=after[2] - before[2],
        gateway_peak_mib=sampler.peaks.get(gateway.pid, math.nan),
        child_peaks_mib={p.pid: sampler.peaks.get(p.pid, math.nan) for p in children},
        feishu_calls=len(seen),
        feishu_wrong_user=sum((got - expected).values())
        + sum(c["token_kind"] != "user" for c in seen),
    )


def memory_snapshot(gateway: GatewayProcess, users: list[BenchUser]) -> dict[str, Any]:
    children = [psutil.Process(u.child_pid) for u in users]
    gateway_proc = psutil.Process(gateway.pid)
    return {
        "gateway_rss_mib": rss_mib(gateway_proc),
        "gateway_uss_mib": uss_mib(gateway_proc),
        "child_rss_mib": spread([rss_mib(p) for p in children]),
        "child_uss_mib": spread([uss_mib(p) for p in children]),
        "all_node_rss_mib": sum(rss_mib(p) for p in gateway.children()),
        "node_processes": len(gateway.children()),
    }


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    counts = sorted({int(n) for n in args.users.split(",") if n.strip()})
    modes = [m for m in args.modes.split(",") if m in MODES]
    procs = ProcessSet(work / "logs")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=2000)
    results: dict[str, Any] = {"machine": machine_facts(), "args": vars(args), "runs": []}
    async with httpx.AsyncClient(trust_env=False, timeout=120, limits=limits) as http:
        emulator = await start_emulator(procs, http, max(counts))
        settings = gateway_settings(args, max(counts))
        gateway = GatewayProcess(procs, emulator, work / "data", **settings)
        results["gateway_settings"] = gateway.settings
        await gateway.wait_ready(http)
        await asyncio.sleep(1)
        results["gateway_idle_no_users"] = memory_snapshot(gateway, [])
        print(f"[bench] gateway pid {gateway.pid} at {gateway.url}; emulator at {emulator.url}")

        users: list[BenchUser] = []
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        try:
            for count in counts:
                new = range(len(users), count)
                print(
                    f"[bench] logging in users {len(users)}..{count - 1}, starting their children"
                )
                users += await asyncio.gather(*(set_up_user(http, gateway, i, gate) for i in new))
                attach_direct(http, gateway, users)
                await gateway.wait_ready(http)
                await asyncio.sleep(2)
                run: dict[str, Any] = {
                    "users": count,
                    "idle_before": memory_snapshot(gateway, users),
                }
                per_user = args.calls or (150 if count == 1 else 20)
                by_mode = {m: ModeResult() for m in modes}
                for round_no in range(args.rounds):
                    order = modes[round_no % len(modes) :] + modes[: round_no % len(modes)]
                    for mode in order:
                        got = await run_mode(
                            http, emulator, gateway, users[:count], mode, per_user, args.warmup
                        )
                        merge(by_mode[mode], got)
                    print(f"[bench] {count} users: round {round_no + 1}/{args.rounds} done")
                await asyncio.sleep(2)
                run["idle_after"] = memory_snapshot(gateway, users)
                run["modes"] = {m: mode_summary(r) for m, r in by_mode.items()}
                run["first_call_ms_at_setup"] = spread(
                    [u.first_call_s * 1000 for u in users[:count]]
                )
                results["runs"].append(run)
        finally:
            for user in users:
                await user.sse.close()
                await user.streamable.close()
            procs.stop_all()
    return results


def merge(into: ModeResult, got: ModeResult) -> None:
    into.samples.add(got.samples)
    into.gateway_cpu_s += got.gateway_cpu_s
    into.children_cpu_s += got.children_cpu_s
    into.emulator_cpu_s += got.emulator_cpu_s
    into.gateway_peak_mib = max(into.gateway_peak_mib, got.gateway_peak_mib)
    for pid, peak in got.child_peaks_mib.items():
        into.child_peaks_mib[pid] = max(into.child_peaks_mib.get(pid, 0.0), peak)
    into.feishu_calls += got.feishu_calls
    into.feishu_wrong_user += got.feishu_wrong_user


def mode_summary(result: ModeResult) -> dict[str, Any]:
    summary = result.samples.summary()
    calls = max(1, result.feishu_calls)
    summary.update(
        gateway_cpu_ms_per_call=result.gateway_cpu_s / calls * 1000,
        child_cpu_ms_per_call=result.children_cpu_s / calls * 1000,
        emulator_cpu_ms_per_call=result.emulator_cpu_s / calls * 1000,
        gateway_peak_rss_mib=result.gateway_peak_mib,
        child_peak_rss_mib=spread(list(result.child_peaks_mib.values())),
        feishu_calls=result.feishu_calls,
        feishu_calls_not_as_caller=result.feishu_wrong_user,
    )
    return summary


def print_tables(results: dict[str, Any]) -> None:
    latency_rows = []
    memory_rows = []
    idle = results["gateway_idle_no_users"]
    memory_rows.append(
        ["gateway", "idle, no user (default child + spares up)", idle["gateway_rss_mib"], "", ""]
    )
    for run in results["runs"]:
        n = run["users"]
        modes = run["modes"]
        floor = modes.get("direct")
        for mode, m in modes.items():
            added50 = m["p50_ms"] - floor["p50_ms"] if floor and mode != "direct" else math.nan
            added99 = m["p99_ms"] - floor["p99_ms"] if floor and mode != "direct" else math.nan
            latency_rows.append(
                [
                    n,
                    {
                        "direct": "lark-mcp child direct",
                        "streamable": "gateway /mcp",
                        "sse": "gateway /sse",
                    }[mode],
                    m["calls"],
                    m["errors"],
                    m["p50_ms"],
                    m["p99_ms"],
                    "-" if mode == "direct" else f"{added50:+.1f}",
                    "-" if mode == "direct" else f"{added99:+.1f}",
                    m["calls_per_s"],
                    f"{m['gateway_cpu_ms_per_call']:.2f}",
                    f"{m['child_cpu_ms_per_call']:.2f}",
                ]
            )
        before, after = run["idle_before"], run["idle_after"]
        peak_gateway = max(m["gateway_peak_rss_mib"] for m in modes.values())
        peak_child = max(m["child_peak_rss_mib"]["max"] for m in modes.values())
        peak_child_median = max(m["child_peak_rss_mib"]["median"] for m in modes.values())
        memory_rows += [
            ["gateway", f"{n} users logged in, idle", before["gateway_rss_mib"], "", ""],
            ["gateway", f"{n} users, peak under load", peak_gateway, "", ""],
            ["gateway", f"{n} users, idle after load", after["gateway_rss_mib"], "", ""],
            [
                "user child (each)",
                f"{n} users, idle after first call",
                before["child_rss_mib"]["median"],
                before["child_rss_mib"]["max"],
                before["child_uss_mib"]["median"],
            ],
            [
                "user child (each)",
                f"{n} users, peak under load",
                peak_child_median,
                peak_child,
                "",
            ],
            [
                "user child (each)",
                f"{n} users, idle after load",
                after["child_rss_mib"]["median"],
                after["child_rss_mib"]["max"],
                after["child_uss_mib"]["median"],
            ],
        ]
        fit = (
            math.floor((FIT_IN_GIB * 1024 - peak_gateway - 300) / peak_child) if peak_child else 0
        )
        run["users_fit_in_24gib_by_peak_child_rss"] = fit
    print("\n### Added latency per tools/call (im_v1_chat_list, reaches the emulator)\n")
    print(
        markdown_table(
            [
                "users",
                "path",
                "calls",
                "errors",
                "p50 ms",
                "p99 ms",
                "added p50",
                "added p99",
                "calls/s",
                "gateway CPU ms/call",
                "child CPU ms/call",
            ],
            latency_rows,
        )
    )
    print("\n### Memory (MiB)\n")
    print(
        markdown_table(
            ["process", "state", "RSS (median)", "RSS max", "USS (median)"], memory_rows
        )
    )
    for run in results["runs"]:
        print(
            f"\n{run['users']} users: about {run['users_fit_in_24gib_by_peak_child_rss']} users "
            f"fit in {FIT_IN_GIB} GiB at the peak child RSS seen here"
        )


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-latency-"))
    try:
        results = asyncio.run(measure(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[bench] data and logs kept in {work}")
    print_tables(results)
    path = save_json("latency", results)
    print(f"\nJSON: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
