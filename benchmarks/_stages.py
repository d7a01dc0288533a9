"""bridges.py in stages: one front at a time, so that 20 or 100 users fit in memory.

Every path needs a lark-mcp per user (~200 MiB each), so at 100 users the four paths cannot
run at once. A staged run takes, for each user count, on one emulator:

  gateway       a gateway of its own (max_instances for all users): child direct, /mcp, /sse
  each bridge   one instance per user, started, measured and stopped before the next

A bridge stage measures child direct beside it on the gateway stage's children if memory allows
keeping them up through the bridge stages; otherwise the gateway stage is stopped first and the
bridge's added latency is taken against the gateway stage's floor (marked † in the table).
Before a stage, and before each batch of users in it, the memory available is checked against
a budget per process, with a reserve kept free; a stage that would not fit is refused, and one
under load is stopped if the memory available runs low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psutil
from _clients import load_client
from _procs import ProcessSet
from _report import MIB, markdown_table, rss_mib, spread, uss_mib
from _stack import Emulator, GatewayProcess, start_emulator
from latency import (
    SETUP_CONCURRENCY,
    BenchUser,
    attach_direct,
    gateway_settings,
    measure_count,
    measure_loads,
    set_up_user,
)

GATEWAY_MODES = ("direct", "streamable", "sse")
# What one more process costs once it has served calls (USS, MiB, measured on this project's
# machine): the budget that decides whether a stage fits. lark-mcp's is --stage-child-mib.
CHILD_MIB = 200.0
GATEWAY_MIB = 100.0
FRONT_MIB = {"supergateway": 90.0, "mcp-proxy": 45.0}
# Left free for everything else on the machine and for the children's growth under load.
RESERVE_MIB = 1536.0
# Under load a stage is stopped if the memory available falls below this, checked this often.
LOW_MIB = 512.0
WATCH_EVERY = 0.5

T = TypeVar("T")


class StageRefused(Exception):
    """A stage that does not fit in the memory available: not started, or stopped."""


def available_mib() -> float:
    return float(psutil.virtual_memory().available) / MIB


async def watched(step: Coroutine[Any, Any, T], what: str) -> T:
    """``step``, cancelled with StageRefused if the memory available falls under LOW_MIB."""
    task = asyncio.ensure_future(step)
    while not task.done():
        await asyncio.wait({task}, timeout=WATCH_EVERY)
        if not task.done() and available_mib() < LOW_MIB:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise StageRefused(
                f"memory available fell under {LOW_MIB:g} MiB under load in {what}; stopped it"
            )
    return task.result()


class MemoryBudget:
    """Whether a stage's processes fit in the memory available, keeping a reserve free."""

    def __init__(self, child_mib: float) -> None:
        self.child_mib = child_mib

    def per_user(self, stage: str) -> float:
        return self.child_mib + FRONT_MIB.get(stage, 0.0)

    def fits(self, stage: str, users: int) -> bool:
        return users * self.per_user(stage) + RESERVE_MIB <= available_mib()

    def check(self, stage: str, users: int, fixed_mib: float = 0.0) -> None:
        """Raise StageRefused unless ``users`` more users of ``stage`` (and ``fixed_mib``) fit."""
        need = users * self.per_user(stage) + fixed_mib
        available = available_mib()
        if need + RESERVE_MIB > available:
            fixed = f" + {fixed_mib:,.0f}" if fixed_mib else ""
            raise StageRefused(
                f"{users} more users need about {need:,.0f} MiB ({users} x "
                f"{self.per_user(stage):,.0f}{fixed}) and {RESERVE_MIB:,.0f} MiB is kept free, "
                f"but {available:,.0f} MiB is available"
            )

    def describe(self) -> dict[str, float]:
        fronts = {f"{name} (front)": mib for name, mib in FRONT_MIB.items()}
        return {
            "lark-mcp": self.child_mib,
            "gateway": GATEWAY_MIB,
            **fronts,
            "kept free": RESERVE_MIB,
        }


class Fronts(Protocol):
    """The bridges: one instance per user, added to each user's routes under its mode."""

    modes: list[str]

    async def attach(
        self,
        http: httpx.AsyncClient,
        emulator: Emulator,
        procs: ProcessSet,
        work: Path,
        users: list[BenchUser],
        modes: Sequence[str] | None = None,
        budget: MemoryBudget | None = None,
    ) -> None: ...

    async def stop(self, procs: ProcessSet, users: list[BenchUser], mode: str) -> None: ...


class Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class Bench:
    """What every stage works with."""

    args: argparse.Namespace
    http: httpx.AsyncClient
    emulator: Emulator
    procs: ProcessSet
    work: Path
    fronts: Fronts
    budget: MemoryBudget


async def measure_staged(
    args: argparse.Namespace, work: Path, counts: list[int], fronts: Fronts, budget: MemoryBudget
) -> list[dict[str, Any]]:
    """Every user count in stages, on one emulator; each count has a gateway of its own."""
    procs = ProcessSet(work / "logs")
    runs: list[dict[str, Any]] = []
    async with load_client() as http:
        try:
            emulator = await start_emulator(procs, http, max(counts))
            bench = Bench(args, http, emulator, procs, work, fronts, budget)
            for count in counts:
                runs.append(await staged_count(bench, count))
        finally:
            procs.stop_all()
    return runs


async def staged_count(bench: Bench, count: int) -> dict[str, Any]:
    """One user count: the gateway stage, then each bridge's stage."""
    run: dict[str, Any] = {"users": count, "stages": []}
    modes = [m for m in bench.args.modes.split(",") if m in GATEWAY_MODES]
    try:
        gateway, users, stage = await gateway_stage(bench, count, modes)
    except StageRefused as refused:
        print(f"[bench] {count} users: gateway stage not measured, nor the others: {refused}")
        run["stages"].append({"stage": "gateway", "not_measured": str(refused)})
        return run
    run["gateway_settings"] = gateway.settings
    run["stages"].append(stage)

    kept: GatewayProcess | None = gateway
    if "direct" in modes and not all(bench.budget.fits(m, count) for m in bench.fronts.modes):
        run["floor_not_kept"] = (
            f"the gateway's children for {count} users could not stay up beside the bridge "
            f"stages ({available_mib():,.0f} MiB available with them up)"
        )
        print(f"[bench] {count} users: {run['floor_not_kept']}; stopping the gateway stage")
    if "floor_not_kept" in run or "direct" not in modes:
        await stop_gateway(bench.procs, gateway, users)
        kept = None
    try:
        for mode in bench.fronts.modes:
            run["stages"].append(await bridge_stage(bench, users, mode, kept))
    finally:
        if kept is not None:
            await stop_gateway(bench.procs, kept, users)
    return run


async def gateway_stage(
    bench: Bench, count: int, modes: list[str]
) -> tuple[GatewayProcess, list[BenchUser], dict[str, Any]]:
    """A gateway for ``count`` users, logged in with their children started, and measured."""
    args, http, budget = bench.args, bench.http, bench.budget
    stage: dict[str, Any] = {"stage": "gateway", "available_mib_before": available_mib()}
    # The default child and the warm spares run beside the users' children.
    budget.check("gateway", count, GATEWAY_MIB + (args.warm_spares + 1) * budget.child_mib)
    extra_env = dict(item.partition("=")[::2] for item in args.gateway_env)
    data_dir = bench.work / f"data-{count}"
    settings = gateway_settings(args, count)
    gateway = GatewayProcess(
        bench.procs, bench.emulator, data_dir, f"gateway-{count}", extra_env, **settings
    )
    users: list[BenchUser] = []
    try:
        await gateway.wait_ready(http)
        print(f"[bench] {count} users, gateway stage: logging in, starting their children")
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        for first in range(0, count, SETUP_CONCURRENCY):
            budget.check("gateway", count - first)
            batch = range(first, min(count, first + SETUP_CONCURRENCY))
            users += await asyncio.gather(*(set_up_user(http, gateway, i, gate) for i in batch))
        await attach_direct(http, bench.emulator, gateway, users)
        await gateway.wait_ready(http)
        await asyncio.sleep(2)
        stage["available_mib_loaded"] = available_mib()
        if modes:  # with --modes naming bridges only, the gateway just logs the users in
            label = ", gateway stage"
            measuring = measure_count(args, http, bench.emulator, gateway, users, modes, label)
            stage |= await watched(measuring, "the gateway stage")
    except BaseException:
        await stop_gateway(bench.procs, gateway, users)
        raise
    return gateway, users, stage


async def bridge_stage(
    bench: Bench, users: list[BenchUser], mode: str, gateway: GatewayProcess | None
) -> dict[str, Any]:
    """One bridge for every user, measured (beside child direct if ``gateway``), stopped."""
    count = len(users)
    stage: dict[str, Any] = {
        "stage": mode,
        "floor": "same stage" if gateway is not None else "gateway stage",
        "available_mib_before": available_mib(),
    }
    print(f"[bench] {count} users, {mode} stage: starting one per user")
    try:
        await bench.fronts.attach(
            bench.http, bench.emulator, bench.procs, bench.work, users, [mode], bench.budget
        )
        await asyncio.sleep(2)
        stage["available_mib_loaded"] = available_mib()
        stage["idle"] = idle_memory(users, mode)
        modes = ["direct", mode] if gateway is not None else [mode]
        measuring = measure_loads(
            bench.args, bench.http, bench.emulator, gateway, users, modes, f", {mode} stage"
        )
        stage["loads"] = await watched(measuring, f"the {mode} stage")
    except StageRefused as refused:
        print(f"[bench] {count} users: {mode} stage not measured: {refused}")
        stage["not_measured"] = str(refused)
    finally:
        await bench.fronts.stop(bench.procs, users, mode)
    return stage


async def stop_gateway(procs: ProcessSet, gateway: GatewayProcess, users: list[BenchUser]) -> None:
    """Close the users' sessions with the gateway and with its children; stop it and them."""
    clients: dict[int, Closable] = {}
    for user in users:
        for mode in GATEWAY_MODES:
            route = user.routes.pop(mode, None)
            if route is not None:
                clients[id(route.client)] = route.client
        clients.update({id(user.sse): user.sse, id(user.streamable): user.streamable})
    for client in clients.values():
        await client.close()
    await asyncio.to_thread(procs.stop, gateway.started)


def idle_memory(users: list[BenchUser], mode: str) -> dict[str, dict[str, float]]:
    routes = [u.routes[mode] for u in users]
    fronts = [psutil.Process(r.front_pid) for r in routes if r.front_pid is not None]
    children = [psutil.Process(r.child_pid) for r in routes]
    return {
        "front_rss_mib": spread([rss_mib(p) for p in fronts]),
        "front_uss_mib": spread([uss_mib(p) for p in fronts]),
        "child_rss_mib": spread([rss_mib(p) for p in children]),
        "child_uss_mib": spread([uss_mib(p) for p in children]),
    }


# -- the report ------------------------------------------------------------------------------


def measured_stages(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in run["stages"] if "loads" in s]


def staged_latency_table(results: dict[str, Any]) -> str:
    """By load shape, then stage; a path with no floor in its own stage takes the gateway
    stage's, marked †."""
    rows = []
    for run in results["staged_runs"]:
        stages = measured_stages(run)
        gateway_loads: dict[str, Any] = next(
            (s["loads"] for s in stages if s["stage"] == "gateway"), {}
        )
        for load in dict.fromkeys(load for s in stages for load in s["loads"]):
            shape = "back to back" if load == "closed" else f"{results['args']['rate']:g}/s"
            for stage in stages:
                modes = stage["loads"].get(load, {})
                floor, mark = modes.get("direct"), ""
                if floor is None:
                    floor, mark = gateway_loads.get(load, {}).get("direct"), " †"
                for mode, m in modes.items():
                    added = ["-", "-"]
                    if floor and mode != "direct":
                        added = [
                            f"{m['p50_ms'] - floor['p50_ms']:+.1f}{mark}",
                            f"{m['p99_ms'] - floor['p99_ms']:+.1f}{mark}",
                        ]
                    row = [run["users"], shape, stage["stage"], results["mode_names"][mode]]
                    row += [m["calls"], m["errors"], m["p50_ms"], m["p99_ms"], *added]
                    row += [m["calls_per_s"], f"{m['proxy_cpu_ms_per_call']:.2f}"]
                    rows.append([*row, f"{m['child_cpu_ms_per_call']:.1f}"])
    header = ["users", "load", "stage", "path", "calls", "errors", "p50 ms", "p99 ms"]
    header += ["added p50", "added p99", "calls/s", "proxy CPU ms/call", "child CPU ms/call"]
    return markdown_table(header, rows)


def staged_memory_table(results: dict[str, Any]) -> str:
    rows: list[list[object]] = []
    for run in results["staged_runs"]:
        for stage in measured_stages(run):
            name = stage["stage"]
            if name == "gateway":
                idle = stage["idle_before"]
                measured = [m for modes in stage["loads"].values() for m in modes.values()]
                front = ["1 for all users", idle["gateway_rss_mib"], idle["gateway_uss_mib"]]
                front.append(max(m["gateway_peak_rss_mib"] for m in measured))
            else:
                idle = stage["idle"]
                measured = [modes[name] for modes in stage["loads"].values()]
                peaks = [m["proxy_peak_rss_mib"] for m in measured]
                front = ["1 per user" if idle["front_rss_mib"]["n"] else "none"]
                front += [idle["front_rss_mib"]["median"], idle["front_uss_mib"]["median"]]
                front.append(
                    max((p["median"] * p["n"] for p in peaks if p["n"]), default=math.nan)
                )
            child = [idle["child_rss_mib"]["median"], idle["child_uss_mib"]["median"]]
            child.append(max(m["child_peak_rss_mib"]["median"] for m in measured))
            before, loaded = stage["available_mib_before"], stage["available_mib_loaded"]
            rows.append([run["users"], name, *front, *child, f"{before:,.0f} -> {loaded:,.0f}"])
    header = ["users", "stage", "front processes", "front RSS idle", "front USS idle"]
    header += ["front RSS peak (all users)", "child RSS idle", "child USS idle"]
    header += ["child RSS peak (median)", "MiB available: before -> stage up"]
    return markdown_table(header, rows)


def staged_notes(results: dict[str, Any]) -> list[str]:
    rate = results["args"]["rate"]
    notes = [
        f"one front at a time; the paced rows ({rate:g} calls/s over all users) are the "
        "comparison: back to back with many users measures how fast 2 cores saturate"
    ]
    for run in results["staged_runs"]:
        if "floor_not_kept" in run:
            notes.append(
                f"† {run['users']} users: {run['floor_not_kept']}, so each bridge is compared "
                "with the gateway stage's child direct, measured minutes earlier; the child-sse "
                "stage, lark-mcp's SSE mode called straight, is a floor taken late to check it by"
            )
        for stage in run["stages"]:
            if "not_measured" in stage:
                why = stage["not_measured"]
                notes.append(f"{run['users']} users, {stage['stage']} stage not measured: {why}")
    return notes
