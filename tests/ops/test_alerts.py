"""Alerts reach a Feishu bot webhook and a generic webhook on loopback, once, signed."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from ops_support import ACCEPT, Receiver, Seen, call_tool, logged_in_session, wait_until

from larkgate import alerts
from larkgate.alerts import Alert, AlertManager, Severity, feishu_sign
from larkgate.config import load_settings
from larkgate.emulator import RunningEmulator
from support import GatewayServer, play_browser_login

FEISHU_SECRET = "bot-signing-secret"
HOOK_SECRET = "generic-hook-secret"


def check_feishu_signature(body: dict[str, Any]) -> None:
    assert body["msg_type"] == "text" and isinstance(body["content"]["text"], str)
    assert body["sign"] == feishu_sign(body["timestamp"], FEISHU_SECRET)
    assert abs(int(body["timestamp"]) - time.time()) < 3600


def check_hook_signature(headers: dict[str, str], raw: bytes) -> None:
    stamp = headers["x-larkgate-timestamp"]
    mac = hmac.new(HOOK_SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256)
    assert hmac.compare_digest(headers["x-larkgate-signature"], "sha256=" + mac.hexdigest())


def alert(kind: str, subject: str = "x") -> Alert:
    return Alert(kind, subject, Severity.WARNING, f"{kind} happened", "text", "do this")


@pytest.mark.anyio
async def test_alerts_are_deduplicated_rate_limited_resolved_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(alerts, "RETRY_DELAY", 0.0)
    with Receiver() as receiver:
        settings = load_settings(
            alert_feishu_webhook=f"{receiver.url}/bot",
            alert_feishu_secret=FEISHU_SECRET,
            alert_max_per_hour=3,
        )
        async with httpx.AsyncClient(trust_env=False) as http:
            manager = AlertManager(settings, http)
            assert manager.fire(alert("a"))
            assert not manager.fire(alert("a"))  # the same key again: deduplicated
            assert manager.fire(alert("b"))
            assert manager.resolve("a", "x", "a is fine again")
            assert not manager.fire(alert("c"))  # the fourth this hour: suppressed
            assert manager.suppressed == 1
            await manager.drain()

            texts = [r.json()["content"]["text"] for r in receiver.on("/bot")]
            assert len(texts) == 3
            assert texts[0].startswith("[LarkGate WARNING] a happened")
            assert "What to do: do this" in texts[0]
            assert texts[2].startswith("[LarkGate RESOLVED]")
            for r in receiver.on("/bot"):
                check_feishu_signature(r.json())

            # Feishu answers a bad signature with HTTP 200 and a code: that is a failure.
            receiver.answer = (200, {"code": 19021, "msg": "sign match fail"})
            busy = AlertManager(settings, http)
            assert busy.fire(alert("d"))
            await busy.drain()
            assert busy.recent[0].result == "failed: feishu"
            assert len(receiver.on("/bot")) == 3 + alerts.DELIVERY_ATTEMPTS


def test_gateway_alerts_on_failures_memory_cap_crash_loop_and_feishu_down(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator
) -> None:
    with Receiver() as receiver:
        gateway = start_gateway(
            monitor_interval=0.2,
            feishu_probe_interval=0.2,
            feishu_timeout=0.5,
            max_instances=1,
            restart_limit=1,
            instance_memory_limit_mb=1,
            alert_failure_burst=2,
            alert_feishu_webhook=f"{receiver.url}/bot",
            alert_feishu_secret=FEISHU_SECRET,
            alert_webhook_url=f"{receiver.url}/hook",
            alert_webhook_secret=HOOK_SECRET,
        )
        alice = emulator.state.config.find_user("alice")
        assert alice is not None
        seen = Seen()

        def kinds() -> set[str]:
            return {r.json()["kind"] for r in receiver.on("/hook")}

        # Two people cancel their login.
        with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
            for _ in range(2):
                init = http.post("/mcp", json=INIT_ANON, headers=ACCEPT)
                link = init.json()["result"]["instructions"].split()[-1]
                assert play_browser_login(link, "alice", deny=True).status_code == 400
        wait_until(lambda: "login_failures" in kinds(), what="the login failure alert")

        # Alice and Bob log in; every instance is over a 1 MiB memory limit.
        alice_session = logged_in_session(gateway.url, "alice", seen)
        bob_session = logged_in_session(gateway.url, "bob", seen)
        wait_until(lambda: "instance_memory" in kinds(), what="the memory alert")

        # Feishu hangs: Alice's call holds the only instance, Bob is turned away, and the
        # probe finds Feishu unreachable.
        emulator.state.faults.hang(3.0, "openapi")
        with httpx.Client(base_url=gateway.url, timeout=30, trust_env=False) as http:
            waiting = threading.Thread(target=call_tool, args=(http, alice_session, 5))
            waiting.start()
            wait_until(
                lambda: (c := gateway.gateway.pool.child_of(alice.open_id)) and c.in_flight,
                what="alice's call in flight",
            )
            refused = http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {}},
                headers={**ACCEPT, "Mcp-Session-Id": bob_session},
            )
            assert refused.status_code == 503
            waiting.join(30)
        wait_until(lambda: "instance_cap" in kinds(), what="the instance cap alert")
        wait_until(lambda: "feishu_unreachable" in kinds(), what="the Feishu alert")
        emulator.state.faults.clear()
        wait_until(
            lambda: any(
                r.json()["kind"] == "feishu_unreachable" and r.json()["status"] == "resolved"
                for r in receiver.on("/hook")
            ),
            what="the Feishu alert resolved",
        )

        # Alice's child dies once, and one crash is the limit: it is paused.
        child = gateway.gateway.pool.child_of(alice.open_id)
        assert child is not None
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: "crash_loop" in kinds(), what="the crash loop alert")
        gateway.stop()

    hooks = receiver.on("/hook")
    for r in hooks:
        check_hook_signature(r.headers, r.body)
        body = r.json()
        assert body["source"] == "larkgate" and body["gateway"] == gateway.settings.public_url
        if body["status"] == "firing":
            assert body["title"] and body["text"] and body["action"]
    firing_keys = [r.json()["key"] for r in hooks if r.json()["status"] == "firing"]
    assert len(firing_keys) == len(set(firing_keys)), "an alert was sent twice"

    bot = receiver.on("/bot")
    assert len(bot) == len(hooks)
    for r in bot:
        check_feishu_signature(r.json())
    crash = next(
        r.json()["content"]["text"] for r in bot if "keeps crashing" in r.json()["content"]["text"]
    )
    assert "larkgate logs" in crash and "What to do:" in crash
    every_text = "\n".join(r.body.decode() for r in [*hooks, *bot])
    assert alice.open_id not in every_text
    assert not any(s in every_text for s in seen.all())


INIT_ANON = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t"}},
}
