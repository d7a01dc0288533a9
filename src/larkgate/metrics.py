"""Prometheus metrics: request counters and latency on the request path, the rest at scrape.

The request path only increments counters and observes histograms (no psutil, no store). What
the gateway *is* at a moment (instances by state, sessions, users, child memory and CPU, the
pool's, keeper's and login's counters) is read when Prometheus scrapes, by `StateCollector`.
Every gateway has its own registry, so several in one process (tests) do not mix.

User identities appear only as the stable hash `larkgate.instances.pool.user_key`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from . import __version__, logs

if TYPE_CHECKING:
    from .app import Gateway
    from .monitor import Sampler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)

# Routes get a fixed label; anything else is "other", so random paths cannot grow the series.
ROUTES: dict[str, tuple[str, str]] = {
    "/mcp": ("/mcp", "streamable"),
    "/sse": ("/sse", "sse"),
    "/messages": ("/messages", "sse"),
    "/messages/": ("/messages", "sse"),
    "/oauth/start": ("/oauth/start", "none"),
    "/oauth/callback": ("/oauth/callback", "none"),
    "/tools": ("/tools", "none"),
    "/health": ("/health", "none"),
    "/metrics": ("/metrics", "none"),
}
STREAM_ROUTES = frozenset({"/sse"})
KNOWN_METHODS = frozenset(
    {"initialize", "ping", "tools/list", "tools/call", "resources/list", "prompts/list"}
)

_route: ContextVar[tuple[str, str]] = ContextVar("larkgate_route", default=("other", "none"))

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_of(path: str) -> tuple[str, str]:
    if path in ROUTES:
        return ROUTES[path]
    if path == "/admin" or path.startswith("/admin/"):
        return ("/admin", "none")
    return ("other", "none")


class Metrics:
    """The metrics a gateway updates as it works, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "larkgate_http_requests",
            "HTTP requests answered, by route, transport and status",
            ["route", "transport", "status"],
            registry=r,
        )
        self.errors = Counter(
            "larkgate_request_errors",
            "Failed requests and in-band MCP errors, by route, transport and stable error code",
            ["route", "transport", "code"],
            registry=r,
        )
        self.gateway_seconds = Histogram(
            "larkgate_request_duration_seconds",
            "Time in the gateway per request (the gateway hop, child hop included)",
            ["route", "transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.child_seconds = Histogram(
            "larkgate_child_request_duration_seconds",
            "Time of one hop from the gateway to a lark-mcp child and back",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "larkgate_mcp_messages",
            "MCP requests handled, by transport, method and outcome",
            ["transport", "method", "outcome"],
            registry=r,
        )
        self.streams = Gauge(
            "larkgate_open_streams", "Open event streams, by transport", ["transport"], registry=r
        )
        self.requests_per_second = Gauge(
            "larkgate_requests_per_second",
            "HTTP requests a second over the last monitor interval",
            registry=r,
        )
        self.alerts = Counter(
            "larkgate_alerts",
            "Alerts raised, by kind and delivery",
            ["kind", "result"],
            registry=r,
        )
        self.backups = Counter(
            "larkgate_backups", "Scheduled backups, by outcome", ["outcome"], registry=r
        )
        Gauge("larkgate_build_info", "LarkGate version", ["version"], registry=r).labels(
            __version__
        ).set(1)
        ProcessCollector(registry=r)
        self.total_requests = 0
        self.rate = 0.0

    def set_rate(self, per_second: float) -> None:
        self.rate = per_second
        self.requests_per_second.set(per_second)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- hooks the router calls --------------------------------------------------------------

    def child_hop(self, method: str, seconds: float) -> None:
        self.child_seconds.labels(_method_label(method)).observe(seconds)

    def mcp_message(self, message: Any, reply: Any) -> None:
        """Count one JSON-RPC request by its outcome: ok, an error code, or a tool error."""
        if not isinstance(message, dict) or "id" not in message:
            return
        route, transport = _route.get()
        outcome = _outcome(reply)
        self.messages.labels(transport, _method_label(message.get("method")), outcome).inc()
        if outcome != "ok":
            self.errors.labels(route, transport, outcome).inc()


def _method_label(method: Any) -> str:
    return method if isinstance(method, str) and method in KNOWN_METHODS else "other"


def _outcome(reply: Any) -> str:
    if not isinstance(reply, dict):
        return "ok"
    error = reply.get("error")
    if isinstance(error, dict):
        data = error.get("data")
        code = data.get("code") if isinstance(data, dict) else None
        return code if isinstance(code, str) else f"rpc_{error.get('code')}"
    result = reply.get("result")
    if isinstance(result, dict) and result.get("isError"):
        content = result.get("content") or []
        text = content[0].get("text", "") if content and isinstance(content[0], dict) else ""
        return "login_required" if "login_required" in str(text) else "tool_error"
    return "ok"


class ObservedRequests:
    """ASGI middleware: request id and route into the context, then count and time the request.

    Event streams are counted as open streams while they last; their duration is not a
    request latency and stays out of the histogram.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, transport = route_of(scope.get("path", ""))
        request_id = logs.new_request_id()
        logs.reset_context()
        logs.bind(request_id=request_id)
        _route.set((route, transport))
        status = 500
        streaming = route in STREAM_ROUTES and scope.get("method") == "GET"
        started = time.perf_counter()

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
                if streaming and status == 200:
                    self.metrics.streams.labels(transport).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            m = self.metrics
            m.total_requests += 1
            m.requests.labels(route, transport, str(status)).inc()
            if status >= 400:
                m.errors.labels(route, transport, f"http_{status}").inc()
            if streaming and status == 200:
                m.streams.labels(transport).dec()
            else:
                m.gateway_seconds.labels(route, transport).observe(time.perf_counter() - started)


class StateCollector:
    """What the gateway is right now, read at scrape time."""

    def __init__(self, gateway: Gateway, sampler: Sampler) -> None:
        self._gateway = gateway
        self._sampler = sampler

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        g = self._gateway
        yield _gauge_by(
            "larkgate_instances",
            "lark-mcp children by state (ready: serving a request or a stream)",
            "state",
            self._instance_states(),
        )
        yield _counter_by(
            "larkgate_instance_events",
            "Pool events: spawns, restarts, reaps, crashes, refusals",
            "event",
            dict(g.pool.events),
        )
        yield _counter_by(
            "larkgate_token_refreshes",
            "Feishu token refreshes by outcome",
            "outcome",
            dict(getattr(g.keeper, "outcomes", {})),
        )
        yield _counter_by(
            "larkgate_logins",
            "Feishu logins by outcome",
            "outcome",
            dict(getattr(g.login, "outcomes", {})),
        )
        yield _gauge_by(
            "larkgate_sessions", "Open MCP sessions by transport", "transport", g.sessions.count()
        )
        yield _gauge_by("larkgate_users", "Known users by login state", "state", self._users())
        yield from self._instance_usage()

    def _instance_states(self) -> dict[str, int]:
        pool = self._gateway.pool
        counts = pool.counts()
        states = {"starting": counts.starting, "ready": 0, "idle": 0, "spare": counts.spares}
        states["failed"] = counts.failed
        states["default"] = 1 if counts.default_ready else 0
        for role, child in pool.instances():
            if role == "user" and child.alive:
                states["idle" if child.idle else "ready"] += 1
        return states

    def _users(self) -> dict[str, int]:
        states = {"logged_in": 0, "needs_login": 0, "logged_out": 0}
        for user in self._gateway.store.list_users():
            if user.has_tokens and not user.needs_login:
                states["logged_in"] += 1
            elif user.has_tokens:
                states["needs_login"] += 1
            else:
                states["logged_out"] += 1
        return states

    def _instance_usage(self) -> Iterator[Metric]:
        labels = ["instance", "role", "user"]
        rss = GaugeMetricFamily(
            "larkgate_instance_resident_bytes", "RSS of each lark-mcp child", labels=labels
        )
        cpu = CounterMetricFamily(
            "larkgate_instance_cpu_seconds", "CPU time of each lark-mcp child", labels=labels
        )
        age = GaugeMetricFamily(
            "larkgate_instance_age_seconds", "Seconds since each child started", labels=labels
        )
        now = time.time()
        for series in self._sampler.instances():
            latest = series.latest
            if latest is None:
                continue
            values = [series.child_id, series.role, series.user or ""]
            rss.add_metric(values, latest.rss)
            cpu.add_metric(values, latest.cpu_seconds)
            age.add_metric(values, now - series.started_at)
        yield rss
        yield cpu
        yield age
        gateway = self._sampler.gateway_latest()
        if gateway is not None:
            yield GaugeMetricFamily(
                "larkgate_gateway_resident_bytes", "RSS of the gateway process", gateway.rss
            )
            yield GaugeMetricFamily(
                "larkgate_gateway_cpu_percent",
                "CPU of the gateway process over the last monitor interval (100 = one core)",
                gateway.cpu_percent,
            )


def _gauge_by(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _counter_by(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
