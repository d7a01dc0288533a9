"""Load loops, percentiles, memory sampling, the markdown table and the JSON file."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

OUT_DIR = Path(__file__).resolve().parent / "out"
MIB = 2**20

Call = Callable[[int], Awaitable[None]]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Samples:
    """Latencies (seconds) of one measured configuration, pooled over rounds."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    def add(self, other: Samples) -> None:
        self.latencies.extend(other.latencies)
        self.errors.extend(other.errors)
        self.wall += other.wall

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "calls": len(ordered),
            "errors": len(self.errors),
            "p50_ms": percentile(ordered, 50) * 1000,
            "p90_ms": percentile(ordered, 90) * 1000,
            "p99_ms": percentile(ordered, 99) * 1000,
            "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
            "mean_ms": (sum(ordered) / len(ordered) * 1000) if ordered else math.nan,
            "calls_per_s": len(ordered) / self.wall if self.wall else math.nan,
            "first_errors": self.errors[:3],
        }


async def run_load(
    calls: Sequence[Call], per_user: int, warmup: int, rate: float | None = None
) -> Samples:
    """All users at once, one call in flight each; ``calls[i](seq)`` raises on a bad reply.

    With ``rate`` None every user calls back to back (closed loop: the machine saturates).
    Otherwise calls arrive at random (Poisson) times at ``rate`` calls/s over all users, the
    way people using AI clients arrive, and a user whose previous call is still running sends
    the next as soon as it returns. Latency is timed from the send.
    """
    samples = Samples()
    go = asyncio.Event()
    per_user_rate = rate / len(calls) if rate else None
    chance = random.Random(0)

    async def user(call: Call, user_index: int) -> None:
        await go.wait()
        due = time.perf_counter()
        if per_user_rate:
            due += chance.uniform(0, 1 / per_user_rate)
        for n in range(warmup + per_user):
            if per_user_rate:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due = max(due, time.perf_counter()) + chance.expovariate(per_user_rate)
            seq = user_index * 1_000_000 + n
            started = time.perf_counter()
            try:
                await call(seq)
            except Exception as exc:
                samples.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            if n >= warmup:
                samples.latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(user(c, i)) for i, c in enumerate(calls)]
    await asyncio.sleep(0)
    began = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    samples.wall = time.perf_counter() - began
    return samples


async def run_steady(calls: Sequence[Call], rate: float, seconds: float) -> Samples:
    """Calls arrive at random (Poisson) times at ``rate`` calls/s for ``seconds``, open loop.

    The arrivals go to ``calls`` in turn, so the load stays the same however many there are,
    and a call never waits for the one before it (an MCP session may have several in flight).
    Unlike ``run_load``, the rate holds until the end instead of thinning out while the slowest
    callers finish. Latency is timed from the send; the wall time runs to the last reply.
    """
    samples = Samples()
    chance = random.Random(0)

    async def one(call: Call, seq: int) -> None:
        started = time.perf_counter()
        try:
            await call(seq)
        except Exception as exc:
            samples.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        samples.latencies.append(time.perf_counter() - started)

    sent: list[asyncio.Task[None]] = []
    began = time.perf_counter()
    due = began + chance.expovariate(rate)
    while due < began + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        seq = len(sent)
        sent.append(asyncio.create_task(one(calls[seq % len(calls)], seq)))
        due += chance.expovariate(rate)
    await asyncio.gather(*sent)
    samples.wall = time.perf_counter() - began
    return samples


def machine_busy() -> dict[str, object]:
    """Load average and lark-mcp processes this run did not start: both make figures noisy."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    foreign = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "lark-mcp" in cmdline and proc.info["pid"] not in ours:
            foreign += 1
    return {"load_average_1m": round(os.getloadavg()[0], 2), "foreign_lark_mcp": foreign}


def rss_mib(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_info().rss) / MIB
    except psutil.Error:
        return math.nan


def uss_mib(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_full_info().uss) / MIB
    except psutil.Error:
        return math.nan


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class PeakSampler:
    """Samples RSS of some processes on a thread; keeps each one's peak while running."""

    def __init__(self, procs: Callable[[], Sequence[psutil.Process]], every: float = 0.25) -> None:
        self._procs = procs
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peaks: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self._procs():
                value = rss_mib(proc)
                if not math.isnan(value):
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), value)
            self._stop.wait(self._every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of per-process figures."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": percentile(ordered, 50),
        "max": ordered[-1],
    }


def describe_busy(results: dict[str, Any]) -> str:
    before, after = results["busy_before"], results["busy_after"]
    text = (
        f"machine load average {before['load_average_1m']} before, "
        f"{after['load_average_1m']} after; lark-mcp processes of other programs: "
        f"{before['foreign_lark_mcp']} before, {after['foreign_lark_mcp']} after"
    )
    if max(before["foreign_lark_mcp"], after["foreign_lark_mcp"]) or before["load_average_1m"] > 1:
        text += " (the machine was not quiet: expect noisy figures)"
    return text


def fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(name: str, payload: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
