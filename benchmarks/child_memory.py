"""How Node flags and tool presets change a lark-mcp child's memory, start and speed.

Each variant is a `larkgate serve` process with its own child settings (child_heap_mb,
child_v8_flags, lark_tools) and warm_spares=0. One user logs in to each; the first call starts
that user's child (timed), then the variants take turns making --calls calls through the
gateway's /mcp. A heap cap too small for lark-mcp shows up as errors and child restarts.

  .venv/bin/python benchmarks/child_memory.py               # 6 variants, ~3 min
  .venv/bin/python benchmarks/child_memory.py --calls 2000 --only default,heap192-small
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil
from _clients import check_tool_reply, load_client, tool_call
from _procs import ProcessSet
from _report import (
    PeakSampler,
    Samples,
    cpu_seconds,
    describe_busy,
    machine_busy,
    markdown_table,
    rss_mib,
    run_load,
    save_json,
    uss_mib,
)
from _stack import GatewayProcess, machine_facts, start_emulator
from latency import BenchUser, set_up_user

SMALL_FLAGS = ["--max-semi-space-size=1", "--optimize-for-size"]
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "no-v8-flags": {"child_v8_flags": []},
    "heap192": {"child_heap_mb": 192},
    "heap192-small": {"child_heap_mb": 192, "child_v8_flags": SMALL_FLAGS},
    "heap160": {"child_heap_mb": 160},
    "semi1": {"child_v8_flags": ["--max-semi-space-size=1"]},
    "semi2": {"child_v8_flags": ["--max-semi-space-size=2"]},
    "semi4": {"child_v8_flags": ["--max-semi-space-size=4"]},
    "optimize-for-size": {"child_v8_flags": ["--optimize-for-size"]},
    "im-preset": {"lark_tools": "preset.im.default"},
    "heap192-small-im": {
        "child_heap_mb": 192,
        "child_v8_flags": SMALL_FLAGS,
        "lark_tools": "preset.im.default",
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=700, help="calls per child, all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="turns the variants take")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data and logs")
    return parser.parse_args()


class Variant:
    def __init__(self, name: str, settings: dict[str, object]) -> None:
        self.name = name
        self.settings = settings
        self.gateway: GatewayProcess | None = None
        self.user: BenchUser | None = None
        self.samples = Samples()
        self.child_cpu_s = 0.0
        self.peak_mib = 0.0
        self.failure = ""
        self.figures: dict[str, Any] = {}

    def child(self) -> psutil.Process:
        assert self.gateway is not None and self.user is not None
        pid, _port = self.gateway.user_children()[self.user.open_id]
        return psutil.Process(pid)


async def start(
    http: httpx.AsyncClient, variant: Variant, index: int, gate: asyncio.Semaphore
) -> None:
    assert variant.gateway is not None
    try:
        await variant.gateway.wait_ready(http, timeout=180)
        variant.user = await set_up_user(http, variant.gateway, index, gate)
        child = variant.child()
    except Exception as exc:
        variant.failure = f"did not start: {exc}".splitlines()[0][:200]
        return
    variant.figures.update(
        child_pid=child.pid,
        first_call_ms=variant.user.first_call_s * 1000,
        rss_after_first_call=rss_mib(child),
        uss_after_first_call=uss_mib(child),
    )


async def load_round(variant: Variant, calls: int) -> None:
    assert variant.user is not None
    session, name = variant.user.streamable, variant.user.name

    async def call(seq: int) -> None:
        check_tool_reply(await session.call(tool_call(seq)), name)

    try:
        child = variant.child()
    except (KeyError, psutil.Error):
        variant.failure = variant.failure or "child gone"
        return
    before = cpu_seconds([child])
    with PeakSampler(lambda: [child]) as sampler:
        variant.samples.add(await run_load([call], calls, 0))
    variant.child_cpu_s += cpu_seconds([child]) - before
    variant.peak_mib = max(variant.peak_mib, sampler.peaks.get(child.pid, 0.0))


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    chosen = [n for n in args.only.split(",") if n] or list(VARIANTS)
    variants = [Variant(n, VARIANTS[n]) for n in chosen]
    procs = ProcessSet(work / "logs")
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "busy_before": machine_busy(),
        "args": vars(args),
    }
    async with load_client() as http:
        try:
            emulator = await start_emulator(procs, http, len(variants))
            for v in variants:
                name = f"gateway-{v.name}"
                v.gateway = GatewayProcess(
                    procs, emulator, work / v.name, name=name, warm_spares=0, **v.settings
                )
            # One child starts at a time, so that start times are comparable.
            gate = asyncio.Semaphore(1)
            await asyncio.gather(*(start(http, v, i, gate) for i, v in enumerate(variants)))
            running = [v for v in variants if not v.failure]
            for round_no in range(args.rounds):
                for v in running:
                    await load_round(v, math.ceil(args.calls / args.rounds))
                print(f"[bench] round {round_no + 1}/{args.rounds} done")
            await asyncio.sleep(2)
            for v in running:
                try:
                    child = v.child()
                except (KeyError, psutil.Error):
                    v.failure = v.failure or "child gone after load"
                    continue
                v.figures.update(
                    rss_after_load=rss_mib(child),
                    uss_after_load=uss_mib(child),
                    child_restarted=child.pid != v.figures["child_pid"],
                )
        finally:
            results["busy_after"] = machine_busy()
            procs.stop_all()
    results["variants"] = [summary(v) for v in variants]
    return results


def summary(variant: Variant) -> dict[str, Any]:
    figures = dict(variant.figures)
    figures.update(variant.samples.summary())
    calls = max(1, len(variant.samples.latencies))
    figures.update(
        name=variant.name,
        settings=variant.settings,
        failure=variant.failure,
        peak_rss_under_load=variant.peak_mib,
        child_cpu_ms_per_call=variant.child_cpu_s / calls * 1000,
    )
    return figures


def table(results: dict[str, Any]) -> str:
    rows = []
    for v in results["variants"]:
        flags = [f"heap {v['settings'].get('child_heap_mb', 256)}"]
        flags += [str(f) for f in v["settings"].get("child_v8_flags", [])]
        if "lark_tools" in v["settings"]:
            flags.append(str(v["settings"]["lark_tools"]))
        rows.append(
            [
                v["name"],
                " ".join(flags),
                v.get("first_call_ms", math.nan),
                v.get("rss_after_first_call", math.nan),
                v.get("uss_after_first_call", math.nan),
                v.get("peak_rss_under_load", math.nan),
                v.get("rss_after_load", math.nan),
                v["calls"],
                v["errors"]
                or v["failure"]
                or ("child restarted" if v.get("child_restarted") else 0),
                v["p50_ms"],
                v["p99_ms"],
                v["child_cpu_ms_per_call"],
            ]
        )
    header = [
        "variant",
        "child settings",
        "first call ms (spawn)",
        "RSS idle",
        "USS idle",
        "RSS peak",
        "RSS after",
        "calls",
        "errors",
        "p50 ms",
        "p99 ms",
        "child CPU ms/call",
    ]
    return markdown_table(header, rows)


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="larkgate-bench-child-memory-"))
    try:
        results = asyncio.run(measure(args, work))
    finally:
        if args.keep:
            print(f"[bench] data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n### One lark-mcp child per variant, through the gateway's /mcp (MiB, ms)\n")
    print(table(results))
    print(f"\n- {describe_busy(results)}")
    print(f"\nJSON: {save_json('child-memory', results)}")


if __name__ == "__main__":
    main()
