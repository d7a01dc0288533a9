"""Alerts: deduplicated, rate-limited, sent to a Feishu/Lark bot and to a generic webhook.

An alert has a key (its kind and subject). The same key is sent once, then again only after
``alert_repeat_after`` while it stays true; a resolved alert that was sent is announced as
resolved. At most ``alert_max_per_hour`` go out an hour; the rest are counted and listed on the
admin page. Delivery runs in the background with a few retries and never blocks the caller.

Feishu/Lark custom bots take ``{"msg_type": "text", "content": {"text": ...}}``; with signing
on, the body also carries ``timestamp`` and ``sign`` = base64(HMAC-SHA256 keyed with
``timestamp + "\\n" + secret`` over an empty message). The generic webhook gets the alert as
JSON, signed in ``X-LarkGate-Signature`` when a secret is set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .config import Settings

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

RECENT_KEPT = 100
DELIVERY_ATTEMPTS = 3
DELIVERY_TIMEOUT = 10.0
RETRY_DELAY = 1.0
SIGNATURE_HEADER = "X-LarkGate-Signature"
TIMESTAMP_HEADER = "X-LarkGate-Timestamp"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Status(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    """What happened and what to do, in words an operator acts on. No secrets, hashed users."""

    kind: str
    subject: str
    severity: Severity
    title: str
    text: str
    action: str
    status: Status = Status.FIRING
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"

    def as_text(self, gateway: str) -> str:
        head = "RESOLVED" if self.status is Status.RESOLVED else self.severity.value.upper()
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        lines = [f"[LarkGate {head}] {self.title}", self.text]
        if self.status is Status.FIRING:
            lines.append(f"What to do: {self.action}")
        lines.append(f"Gateway: {gateway or 'unnamed'} · {when}")
        return "\n".join(lines)

    def as_json(self, gateway: str) -> dict[str, Any]:
        body = asdict(self)
        body.update(source="larkgate", gateway=gateway, key=self.key)
        return body


@dataclass
class AlertRecord:
    """One alert as the admin page shows it: sent, suppressed, or how delivery went."""

    alert: Alert
    result: str


class Sink(Protocol):
    name: str

    async def send(self, http: httpx.AsyncClient, alert: Alert, gateway: str) -> None:
        """Deliver once; raise DeliveryFailed (or an httpx error) when it did not arrive."""
        ...


class DeliveryFailed(Exception):
    """The receiver refused the alert; the message says why, without the webhook URL."""


def feishu_sign(timestamp: str, secret: str) -> str:
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def webhook_signature(timestamp: str, body: bytes, secret: str) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class FeishuBotSink:
    name = "feishu"

    def __init__(self, url: str, secret: str) -> None:
        self._url = url
        self._secret = secret

    async def send(self, http: httpx.AsyncClient, alert: Alert, gateway: str) -> None:
        body: dict[str, Any] = {"msg_type": "text", "content": {"text": alert.as_text(gateway)}}
        if self._secret:
            timestamp = str(int(time.time()))
            body.update(timestamp=timestamp, sign=feishu_sign(timestamp, self._secret))
        response = await http.post(self._url, json=body, timeout=DELIVERY_TIMEOUT)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        code = answer.get("code", answer.get("StatusCode", 0)) if isinstance(answer, dict) else 0
        if response.status_code != 200 or code not in (0, None):
            message = answer.get("msg", "") if isinstance(answer, dict) else ""
            raise DeliveryFailed(f"HTTP {response.status_code} code {code} {message}".strip())


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, secret: str) -> None:
        self._url = url
        self._secret = secret

    async def send(self, http: httpx.AsyncClient, alert: Alert, gateway: str) -> None:
        body = json.dumps(alert.as_json(gateway)).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = webhook_signature(timestamp, body, self._secret)
        response = await http.post(
            self._url, content=body, headers=headers, timeout=DELIVERY_TIMEOUT
        )
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}")


def sinks_from(settings: Settings) -> list[Sink]:
    sinks: list[Sink] = []
    feishu = settings.alert_feishu_webhook.get_secret_value()
    if feishu:
        sinks.append(FeishuBotSink(feishu, settings.alert_feishu_secret.get_secret_value()))
    webhook = settings.alert_webhook_url.get_secret_value()
    if webhook:
        sinks.append(WebhookSink(webhook, settings.alert_webhook_secret.get_secret_value()))
    return sinks


class AlertManager:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        metrics: Metrics | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._metrics = metrics
        self._now = now
        self._sinks = sinks_from(settings)
        self._last_sent: dict[str, float] = {}
        self._firing: set[str] = set()
        self._sent_at: deque[float] = deque()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._tail: asyncio.Task[None] | None = None
        self.recent: deque[AlertRecord] = deque(maxlen=RECENT_KEPT)
        self.suppressed = 0

    @property
    def firing(self) -> frozenset[str]:
        return frozenset(self._firing)

    def fire(self, alert: Alert) -> bool:
        """Raise an alert; True when it goes out now, False when deduplicated or rate-limited."""
        now = self._now()
        last = self._last_sent.get(alert.key)
        self._firing.add(alert.key)
        if last is not None and now - last < self._settings.alert_repeat_after:
            return False
        if not self._within_rate(now):
            self.suppressed += 1
            self._record(alert, "suppressed (rate limit)")
            log.warning("alert %s not sent: more than %d this hour", alert.key, self._limit)
            return False
        self._last_sent[alert.key] = now
        self._send(alert)
        return True

    def resolve(self, kind: str, subject: str, text: str) -> bool:
        """End a firing alert; announce it only if the firing one was sent."""
        key = f"{kind}:{subject}"
        if key not in self._firing:
            return False
        self._firing.discard(key)
        if self._last_sent.pop(key, None) is None:
            return False
        alert = Alert(
            kind=kind,
            subject=subject,
            severity=Severity.WARNING,
            title=f"Resolved: {kind.replace('_', ' ')}",
            text=text,
            action="",
            status=Status.RESOLVED,
        )
        if not self._within_rate(self._now()):
            self.suppressed += 1
            self._record(alert, "suppressed (rate limit)")
            return False
        self._send(alert)
        return True

    def resolve_cleared(
        self, kind: str, still_true: Collection[str], text: Callable[[str], str]
    ) -> None:
        """Resolve every firing alert of this kind whose subject is no longer in trouble."""
        for key in self.firing:
            fired_kind, _, subject = key.partition(":")
            if fired_kind == kind and subject not in still_true:
                self.resolve(kind, subject, text(subject))

    @property
    def _limit(self) -> int:
        return self._settings.alert_max_per_hour

    def _within_rate(self, now: float) -> bool:
        while self._sent_at and now - self._sent_at[0] >= 3600:
            self._sent_at.popleft()
        if len(self._sent_at) >= self._limit:
            return False
        self._sent_at.append(now)
        return True

    def _record(self, alert: Alert, result: str) -> AlertRecord:
        record = AlertRecord(alert, result)
        self.recent.appendleft(record)
        if self._metrics is not None:
            self._metrics.alerts.labels(alert.kind, result.split(" ", maxsplit=1)[0]).inc()
        return record

    def _send(self, alert: Alert) -> None:
        log_at = logging.INFO if alert.status is Status.RESOLVED else logging.WARNING
        log.log(log_at, "alert %s %s: %s", alert.status.value, alert.key, alert.title)
        record = self._record(alert, "sent" if self._sinks else "logged (no webhook set)")
        if not self._sinks:
            return
        # Deliveries go out one after another, so a bot shows "resolved" after what it ends.
        task = asyncio.ensure_future(self._deliver_after(self._tail, alert, record))
        self._tail = task
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver_after(
        self, previous: asyncio.Task[None] | None, alert: Alert, record: AlertRecord
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        await self._deliver(alert, record)

    async def _deliver(self, alert: Alert, record: AlertRecord) -> None:
        failures = []
        for sink in self._sinks:
            for attempt in range(1, DELIVERY_ATTEMPTS + 1):
                try:
                    await sink.send(self._http, alert, self._settings.public_url)
                    break
                except (DeliveryFailed, httpx.HTTPError) as exc:
                    reason = str(exc) if isinstance(exc, DeliveryFailed) else type(exc).__name__
                    log.warning(
                        "alert %s to the %s webhook failed (try %d): %s",
                        alert.key,
                        sink.name,
                        attempt,
                        reason,
                    )
                    if attempt == DELIVERY_ATTEMPTS:
                        failures.append(sink.name)
                    else:
                        await asyncio.sleep(RETRY_DELAY * attempt)
        if failures:
            record.result = "failed: " + ", ".join(failures)

    async def drain(self, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Wait for deliveries under way (at shutdown, and in tests)."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout)
