"""The monitor: samples CPU and memory of every child and of the gateway, and raises alerts.

Every ``monitor_interval`` it reads each child's RSS and CPU time with psutil (off the event
loop), keeps the last ``sample_history`` samples per instance for the admin page's charts, and
checks the alert rules against the pool, the store and the counters. Feishu's reachability is
probed on its own, slower schedule. Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import psutil

from .alerts import Alert, AlertManager, Severity
from .instances.spawner import Child
from .userkey import user_key

if TYPE_CHECKING:
    from .app import Gateway
    from .metrics import Metrics

log = logging.getLogger(__name__)

MIB = 1024 * 1024
PROBE_FAILURES_BEFORE_ALERT = 2
DEFAULT_DOWN_SAMPLES = 2
PROBE_PATH = "/open-apis/authen/v1/user_info"


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int
    cpu_seconds: float
    cpu_percent: float


@dataclass
class Series:
    """The recent samples of one process."""

    child_id: str
    role: str
    user: str | None
    pid: int
    started_at: float
    samples: deque[Sample]

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


@dataclass
class _Tracked:
    process: psutil.Process
    series: Series
    last_cpu: float | None = None
    last_at: float | None = None


class Sampler:
    """RSS and CPU of children and of the gateway itself, in ring buffers."""

    def __init__(self, history: int) -> None:
        self._history = history
        self._tracked: dict[str, _Tracked] = {}
        self._gateway = _Tracked(
            psutil.Process(),
            Series("gateway", "gateway", None, psutil.Process().pid, time.time(), deque()),
        )
        self._gateway.series.samples = deque(maxlen=history)

    def instances(self) -> list[Series]:
        return [t.series for t in self._tracked.values()]

    def series_of(self, child_id: str) -> Series | None:
        tracked = self._tracked.get(child_id)
        return tracked.series if tracked else None

    def gateway_series(self) -> Series:
        return self._gateway.series

    def gateway_latest(self) -> Sample | None:
        return self._gateway.series.latest

    def sample(self, instances: list[tuple[str, Child]]) -> None:
        """Take one sample of every live child; forget the ones that are gone."""
        now = time.time()
        seen = set()
        for role, child in instances:
            if not child.alive:
                continue
            seen.add(child.child_id)
            tracked = self._tracked.get(child.child_id)
            if tracked is None or tracked.process.pid != child.pid:
                tracked = self._track(role, child, now)
                if tracked is None:
                    continue
            tracked.series.role = role
            tracked.series.user = user_key(child.user_id) if child.user_id else None
            self._read(tracked, now, include_children=True)
        for gone in set(self._tracked) - seen:
            del self._tracked[gone]
        self._read(self._gateway, now, include_children=False)

    def _track(self, role: str, child: Child, now: float) -> _Tracked | None:
        try:
            process = psutil.Process(child.pid)
            started = process.create_time()
        except psutil.Error:
            return None
        series = Series(
            child.child_id, role, None, child.pid, started, deque(maxlen=self._history)
        )
        tracked = _Tracked(process, series)
        self._tracked[child.child_id] = tracked
        return tracked

    def _read(self, tracked: _Tracked, now: float, *, include_children: bool) -> None:
        processes = [tracked.process]
        try:
            if include_children:
                processes += tracked.process.children(recursive=True)
            rss = 0
            cpu = 0.0
            for process in processes:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    cpu += times.user + times.system
        except psutil.Error:
            return
        percent = 0.0
        if tracked.last_cpu is not None and tracked.last_at is not None and now > tracked.last_at:
            percent = max(0.0, 100.0 * (cpu - tracked.last_cpu) / (now - tracked.last_at))
        tracked.last_cpu, tracked.last_at = cpu, now
        tracked.series.samples.append(Sample(now, rss, cpu, percent))


@dataclass
class _Burst:
    """A counter's recent values, to tell how much it grew within a window."""

    window: float
    points: deque[tuple[float, int]] = field(default_factory=deque)

    def grew_by(self, now: float, total: int) -> int:
        self.points.append((now, total))
        while len(self.points) > 1 and now - self.points[0][0] > self.window:
            self.points.popleft()
        return total - self.points[0][1]


class Monitor:
    """The periodic job: sample, compute the request rate, check the alert rules."""

    def __init__(
        self, gateway: Gateway, sampler: Sampler, alerts: AlertManager, metrics: Metrics
    ) -> None:
        self._gateway = gateway
        self._settings = gateway.settings
        self._sampler = sampler
        self._alerts = alerts
        self._metrics = metrics
        window = self._settings.alert_burst_window
        self._login_failures = _Burst(window)
        self._refresh_failures = _Burst(window)
        self._refused_seen = gateway.pool.events.get("refused", 0)
        self._requests_seen = (time.monotonic(), 0)
        self._default_down = 0
        self._probe_failures = 0
        self._next_probe = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("monitor pass failed; will try again")
            await asyncio.sleep(self._settings.monitor_interval)

    async def tick(self) -> None:
        """One pass: sample, rates, rules, and the Feishu probe when it is due."""
        instances = self._gateway.pool.instances()
        await asyncio.to_thread(self._sampler.sample, instances)
        self._request_rate()
        now = time.monotonic()
        self._check_memory()
        self._check_crash_loops()
        self._check_default()
        self._check_cap()
        self._check_failures(now)
        interval = self._settings.feishu_probe_interval
        if interval > 0 and now >= self._next_probe:
            self._next_probe = now + interval
            await self._probe_feishu()

    def _request_rate(self) -> None:
        now = time.monotonic()
        then, seen = self._requests_seen
        total = self._metrics.total_requests
        if now > then:
            self._metrics.set_rate((total - seen) / (now - then))
        self._requests_seen = (now, total)

    # -- rules --------------------------------------------------------------------------------

    def _check_memory(self) -> None:
        limit_mb = self._settings.instance_memory_limit_mb
        if limit_mb <= 0:
            return
        over = set()
        for series in self._sampler.instances():
            latest = series.latest
            if latest is None or latest.rss <= limit_mb * MIB:
                continue
            over.add(series.child_id)
            who = f"user {series.user}" if series.user else f"the {series.role} instance"
            self._alerts.fire(
                Alert(
                    kind="instance_memory",
                    subject=series.child_id,
                    severity=Severity.WARNING,
                    title=f"lark-mcp instance {series.child_id} is over its memory limit",
                    text=(
                        f"Instance {series.child_id} ({who}) uses {latest.rss // MIB} MiB, "
                        f"over LARKGATE_INSTANCE_MEMORY_LIMIT_MB={limit_mb}."
                    ),
                    action=(
                        f"Stop it (`larkgate instances stop {series.child_id}` or /admin); it "
                        "starts again on the user's next call. If it recurs, lower "
                        "LARKGATE_CHILD_HEAP_MB or give the host more memory."
                    ),
                )
            )
        self._alerts.resolve_cleared(
            "instance_memory", over, lambda subject: f"Instance {subject} is under the limit."
        )

    def _check_crash_loops(self) -> None:
        pool = self._gateway.pool
        failing = set()
        if pool.counts().failed:
            for user in self._gateway.store.list_users():
                if not pool.is_failed(user.user_id):
                    continue
                key = user_key(user.user_id)
                failing.add(key)
                self._alerts.fire(
                    Alert(
                        kind="crash_loop",
                        subject=key,
                        severity=Severity.CRITICAL,
                        title=f"lark-mcp of user {key} keeps crashing and is paused",
                        text=(
                            f"The child of user {key} crashed {self._settings.restart_limit} "
                            f"times within {self._settings.restart_window:g}s. Their calls "
                            "answer instance_failed until the window passes."
                        ),
                        action=(
                            f"Read `larkgate logs {key}` for the cause (often a heap too small "
                            "for LARKGATE_CHILD_HEAP_MB, or a broken Node.js install); "
                            "it is tried again automatically after LARKGATE_RESTART_WINDOW."
                        ),
                    )
                )
        self._alerts.resolve_cleared(
            "crash_loop", failing, lambda subject: f"The child of user {subject} runs again."
        )

    def _check_default(self) -> None:
        if self._gateway.pool.counts().default_ready:
            self._default_down = 0
            self._alerts.resolve(
                "default_instance", "default", "The default instance answers again."
            )
            return
        self._default_down += 1
        if self._default_down >= DEFAULT_DOWN_SAMPLES:
            self._alerts.fire(
                Alert(
                    kind="default_instance",
                    subject="default",
                    severity=Severity.CRITICAL,
                    title="The token-less default lark-mcp instance is down",
                    text=(
                        "Tool discovery for people who have not logged in, and GET /tools, "
                        "fail; /health answers 503."
                    ),
                    action=(
                        "Run `larkgate doctor`; read <data_dir>/logs/default.log. Usually "
                        "Node.js or lark-mcp is missing or broken after an upgrade."
                    ),
                )
            )

    def _check_cap(self) -> None:
        refused = self._gateway.pool.events.get("refused", 0)
        new = refused - self._refused_seen
        self._refused_seen = refused
        if new <= 0:
            return
        limit = self._settings.max_instances
        self._alerts.fire(
            Alert(
                kind="instance_cap",
                subject="pool",
                severity=Severity.WARNING,
                title="Instance cap reached: users are being turned away",
                text=(
                    f"{new} call(s) were refused with instance_busy since the last check: all "
                    f"LARKGATE_MAX_INSTANCES={limit} instances were busy."
                ),
                action=(
                    "Raise LARKGATE_MAX_INSTANCES if memory allows (about 250-350 MiB per "
                    "instance), or lower LARKGATE_IDLE_TIMEOUT so idle instances make room "
                    "sooner."
                ),
            )
        )

    def _check_failures(self, now: float) -> None:
        threshold = self._settings.alert_failure_burst
        window = self._settings.alert_burst_window
        logins = getattr(self._gateway.login, "outcomes", {})
        failed_logins = self._login_failures.grew_by(now, int(logins.get("failed", 0)))
        if failed_logins >= threshold:
            self._alerts.fire(
                Alert(
                    kind="login_failures",
                    subject="feishu",
                    severity=Severity.WARNING,
                    title="Many Feishu logins are failing",
                    text=f"{failed_logins} logins failed within {window:g}s.",
                    action=(
                        "Check the redirect URL in the Feishu app's security settings "
                        "(`larkgate doctor` prints it), LARKGATE_APP_ID/APP_SECRET, and "
                        "Feishu's status. Users who cancelled count here too."
                    ),
                )
            )
        refreshes = getattr(self._gateway.keeper, "outcomes", {})
        failed = sum(int(v) for k, v in refreshes.items() if k != "ok")
        failed_refreshes = self._refresh_failures.grew_by(now, failed)
        if failed_refreshes >= threshold:
            self._alerts.fire(
                Alert(
                    kind="refresh_failures",
                    subject="feishu",
                    severity=Severity.WARNING,
                    title="Many Feishu token refreshes are failing",
                    text=f"{failed_refreshes} token refreshes failed within {window:g}s.",
                    action=(
                        "If Feishu is unreachable or busy, wait: tokens are kept and retried. "
                        "If Feishu refuses them (see the logs for the code), the users must "
                        "log in again; check that nothing else uses the same app's refresh "
                        "tokens (they are single use)."
                    ),
                )
            )

    async def _probe_feishu(self) -> None:
        url = self._settings.open_base_url + PROBE_PATH
        try:
            response = await self._gateway.http.get(
                url, timeout=min(self._settings.feishu_timeout, 10.0)
            )
            problem = f"HTTP {response.status_code}" if response.status_code >= 500 else None
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        if problem is None:
            self._probe_failures = 0
            self._alerts.resolve("feishu_unreachable", "feishu", "Feishu answers again.")
            return
        self._probe_failures += 1
        log.warning("Feishu probe failed (%d in a row): %s", self._probe_failures, problem)
        if self._probe_failures >= PROBE_FAILURES_BEFORE_ALERT:
            self._alerts.fire(
                Alert(
                    kind="feishu_unreachable",
                    subject="feishu",
                    severity=Severity.CRITICAL,
                    title="Feishu is unreachable",
                    text=(
                        f"{self._settings.open_base_url} did not answer "
                        f"{self._probe_failures} checks in a row ({problem}). Logins, "
                        "refreshes and tool calls fail meanwhile; stored tokens are kept."
                    ),
                    action=(
                        "Check DNS, the outbound firewall or proxy from this host to "
                        f"{self._settings.open_base_url}, and Feishu's status page. Nothing "
                        "needs restarting: calls work again when Feishu answers."
                    ),
                )
            )
