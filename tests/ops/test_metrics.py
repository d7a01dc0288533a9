"""GET /metrics on a gateway that served real logins, tool calls, a refresh and a stream."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from ops_support import Seen, call_tool, logged_in_session, wait_until
from prometheus_client.parser import text_string_to_metric_families

from larkgate.emulator import RunningEmulator
from larkgate.userkey import user_key
from support import GatewayServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    response = httpx.get(f"{url}/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_cover_instances_requests_latency_tokens_logins_sessions_and_usage(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    gateway = start_gateway(monitor_interval=0.2, feishu_probe_interval=0)
    alice = emulator.state.config.find_user("alice")
    assert alice is not None
    seen = Seen()
    session_id = logged_in_session(gateway.url, "alice", seen)
    alice_key = user_key(alice.open_id)

    # Three hours on, the access token has expired: the next call refreshes it first.
    gateway.clock.advance(3 * 3600)
    with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
        assert not call_tool(http, session_id, 3).get("isError")
        assert http.get("/no-such-page").status_code == 404
        with http.stream("GET", "/sse") as stream:
            assert stream.status_code == 200
            _, open_streams = scrape(gateway.url)

    def sampled() -> Samples | None:
        _, samples = scrape(gateway.url)
        usage = [k for k in samples if k[0] == "larkgate_instance_resident_bytes"]
        users = {dict(labels).get("user") for _, labels in usage}
        return samples if alice_key in users else None

    samples = wait_until(sampled, what="a CPU/RSS sample of alice's instance")
    text, _ = scrape(gateway.url)

    assert value(samples, "larkgate_instances", state="idle") == 1
    assert value(samples, "larkgate_instances", state="default") == 1
    assert value(samples, "larkgate_instances", state="spare") == 0
    assert (value(samples, "larkgate_instance_events_total", event="spawns") or 0) >= 2
    for event in ("restarts", "reaps", "crashes", "refused"):
        assert value(samples, "larkgate_instance_events_total", event=event) == 0
    assert value(samples, "larkgate_token_refreshes_total", outcome="ok") == 1
    assert value(samples, "larkgate_logins_total", outcome="ok") == 1
    assert value(samples, "larkgate_users", state="logged_in") == 1
    assert value(samples, "larkgate_sessions", transport="streamable") == 1
    assert value(open_streams, "larkgate_open_streams", transport="sse") == 1
    assert value(samples, "larkgate_open_streams", transport="sse") == 0

    calls = dict(transport="streamable", method="tools/call")
    assert value(samples, "larkgate_mcp_messages_total", **calls, outcome="ok") == 2
    mcp = dict(route="/mcp", transport="streamable")
    assert value(samples, "larkgate_http_requests_total", **mcp, status="200") == 3
    assert value(samples, "larkgate_request_duration_seconds_count", **mcp) == 3
    assert value(samples, "larkgate_child_request_duration_seconds_count", method="tools/call")
    other = dict(route="other", transport="none")
    assert value(samples, "larkgate_request_errors_total", **other, code="http_404") == 1

    rss = [
        v
        for (name, labels), v in samples.items()
        if name == "larkgate_instance_resident_bytes" and dict(labels)["user"] == alice_key
    ]
    assert rss and rss[0] > 10 * 1024 * 1024
    assert (value(samples, "larkgate_gateway_resident_bytes") or 0) > 0
    assert value(samples, "process_cpu_seconds_total") is not None
    assert value(samples, "larkgate_requests_per_second") is not None

    # Users appear as hashes only.
    assert alice.open_id not in text and alice.union_id not in text and "Alice" not in text
