"""A new user's first tool call: with a warm spare, without one, and ten newcomers at once.

Each newcomer logs in as an MCP client does (OAuth 2.1 with the gateway, which sends the browser
through the emulator's Feishu login; not timed), opens a Streamable HTTP session and makes a
first ``im_v1_chat_list`` call; that call is timed. It is the call that
gives the user a child: a warm spare handed over, or a fresh lark-mcp started.

  sequential, warm_spares=1  one newcomer at a time, each after the spare was refilled
  sequential, warm_spares=0  one newcomer at a time, each waiting for a spawn
  burst                      ten newcomers in the same second, for each --burst-spares value

Every scenario runs on its own `larkgate serve` process, all on 127.0.0.1.

  .venv/bin/python benchmarks/first_call.py                # ~2 min
  .venv/bin/python benchmarks/first_call.py --samples 20 --burst-spares 0,1,5,10
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _clients import (
    StreamableSession,
    check_tool_reply,
    load_client,
    oauth_access_token,
    tool_call,
)
from _procs import ProcessSet
from _report import (
    Samples,
    describe_busy,
    machine_busy,
    markdown_table,
    save_json,
)
from _stack import Emulator, GatewayProcess, machine_facts, start_emulator
from emulator_server import bench_login

from larkgate.emulator.config import make_user


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=8, help="sequential newcomers with a spare")
    parser.add_argument(
        "--cold-samples", type=int, default=5, help="sequential newcomers without a spare"
    )
    parser.add_argument("--burst", type=int, default=10, help="newcomers arriving together")
    parser.add_argument(
        "--burst-spares", default="1,10", help="warm_spares values to run the burst with"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    return parser.parse_args()


class Newcomers:
    """Hands out emulator users no gateway has seen yet."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        self._next += 1
        return self._next - 1


async def logged_in(http: httpx.AsyncClient, gateway: GatewayProcess, index: int) -> Any:
    token = await oauth_access_token(gateway.url, bench_login(index))
    return await StreamableSession(http, gateway.url, token).open()


async def timed_first_call(session: StreamableSession, index: int, samples: Samples) -> None:
    name = make_user(bench_login(index)).name
    began = time.perf_counter()
    try:
        check_tool_reply(await session.call(tool_call(1)), name)
    except Exception as exc:
        samples.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        return
    samples.latencies.append(time.perf_counter() - began)


async def settled(http: httpx.AsyncClient, gateway: GatewayProcess) -> None:
    """Until the spares are refilled and nothing is starting, so samples do not overlap."""
    await gateway.wait_ready(http)
    await asyncio.sleep(0.5)


async def sequential(
    http: httpx.AsyncClient, gateway: GatewayProcess, people: Newcomers, count: int
) -> Samples:
    samples = Samples()
    for _ in range(count):
        await settled(http, gateway)
        index = people.take()
        session = await logged_in(http, gateway, index)
        await timed_first_call(session, index, samples)
        await session.close()
    return samples


async def burst(
    http: httpx.AsyncClient, gateway: GatewayProcess, people: Newcomers, count: int
) -> Samples:
    await settled(http, gateway)
    indexes = [people.take() for _ in range(count)]
    sessions = [await logged_in(http, gateway, i) for i in indexes]
    samples = Samples()
    began = time.perf_counter()
    await asyncio.gather(
        *(timed_first_call(s, i, samples) for s, i in zip(sessions, indexes, strict=True))
    )
    samples.wall = time.perf_counter() - began
    for session in sessions:
        await session.close()
    return samples


async def scenario(
    procs: ProcessSet,
    http: httpx.AsyncClient,
    emulator: Emulator,
    work: Path,
    people: Newcomers,
    name: str,
    spares: int,
    count: int,
    together: bool,
) -> dict[str, Any]:
    gateway = GatewayProcess(
        procs,
        emulator,
        work / name,
        name=name,
        warm_spares=spares,
        max_instances=max(20, count + spares),
    )
    try:
        await gateway.wait_ready(http)
        run = burst if together else sequential
        samples = await run(http, gateway, people, count)
    finally:
        procs.stop(gateway.started)
    summary = samples.summary()
    summary.update(scenario=name, warm_spares=spares, newcomers=count, together=together)
    print(f"[bench] {name}: p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms")
    return summary


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    burst_spares = [int(s) for s in args.burst_spares.split(",") if s.strip()]
    total = args.samples + args.cold_samples + args.burst * len(burst_spares)
    procs = ProcessSet(work / "logs")
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "busy_before": machine_busy(),
        "args": vars(args),
        "scenarios": [],
    }
    people = Newcomers()
    async with load_client() as http:
        try:
            emulator = await start_emulator(procs, http, total)
            plan = [
                ("with-spare", 1, args.samples, False),
                ("no-spare", 0, args.cold_samples, False),
                *((f"burst-spares-{s}", s, args.burst, True) for s in burst_spares),
            ]
            for name, spares, count, together in plan:
                if count <= 0:
                    continue
                results["scenarios"].append(
                    await scenario(
                        procs, http, emulator, work, people, name, spares, count, together
                    )
                )
        finally:
            results["busy_after"] = machine_busy()
            procs.stop_all()
    return results


def table(results: dict[str, Any]) -> str:
    rows = []
    for s in results["scenarios"]:
        arrival = f"{s['newcomers']} at once" if s["together"] else f"{s['newcomers']}, one by one"
        rows.append(
            [
                s["scenario"],
                s["warm_spares"],
                arrival,
                s["errors"],
                s["p50_ms"],
                s["p99_ms"],
                s["max_ms"],
            ]
        )
    header = ["scenario", "warm_spares", "newcomers", "errors", "p50 ms", "p99 ms", "max ms"]
    return markdown_table(header, rows)


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-first-call-"))
    try:
        results = asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"[bench] data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n### A new user's first tools/call (login not included)\n")
    print(table(results))
    print(f"\n- {describe_busy(results)}")
    print(f"\nJSON: {save_json('first-call', results)}")


if __name__ == "__main__":
    main()
