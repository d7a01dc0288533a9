"""Logging set-up: one format for the whole gateway, context in every line, secrets scrubbed.

Loggers are named after modules. Each line carries the request id, the hashed user and the
instance (child) it concerns, taken from context variables that the request middleware and the
router set, so no call site has to pass them. Lines are JSON when stderr is not a terminal
(log collectors, PM2, journald) and plain text when a person watches.

Redaction is the last line of defence, applied to every formatted line including tracebacks:
bearer and Feishu tokens, OAuth codes and states, session ids and login-link handles, secrets in
query strings and JSON, long opaque strings, and raw Feishu user ids (replaced by the user's
stable hash).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any

from .config import LogFormat
from .userkey import user_key

REDACTED = "[redacted]"
CONTEXT_FIELDS = ("request_id", "user", "instance")

_request_id: ContextVar[str | None] = ContextVar("larkgate_request_id", default=None)
_user: ContextVar[str | None] = ContextVar("larkgate_user", default=None)
_instance: ContextVar[str | None] = ContextVar("larkgate_instance", default=None)

_SECRET_NAMES = "|".join(  # names of secrets, not one
    [
        "code",
        "state",
        "sessionId",
        "session_id",
        "login",  # a login link's handle
        "access_token",
        "refresh_token",
        "client_secret",
        "app_secret",
        "code_verifier",
        "code_challenge",
        "key",
        "token",
        "secret",
        "password",
        "sign",
        "csrf",
        "user_access_token",
    ]
)
_Replacement = str | Callable[[re.Match[str]], str]


def _feishu_user(match: re.Match[str]) -> str:
    return f"user:{user_key(match.group(0))}"


_HEX = frozenset("0123456789abcdefABCDEF")


def _opaque(match: re.Match[str]) -> str:
    """Long random-looking runs are tokens, keys or digests; names and paths are not."""
    text = match.group(0)
    mixed = (
        any(c.isdigit() for c in text)
        and any(c.islower() for c in text)
        and any(c.isupper() for c in text)
    )
    return REDACTED if mixed or _HEX.issuperset(text) else text


_SECRET_PATTERNS: list[tuple[re.Pattern[str], _Replacement]] = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"\b(u|ur|t)-[A-Za-z0-9._-]{8,}"), r"\1-" + REDACTED),
    (
        # Short numbers (Feishu's error codes, counts) are not secrets.
        re.compile(rf"(?i)\b({_SECRET_NAMES})=(?!\d{{1,9}}\b)([^&\s\"',;]+)"),
        r"\1=" + REDACTED,
    ),
    (
        re.compile(rf"(?i)([\"']?(?:{_SECRET_NAMES})[\"']?\s*:\s*)[\"']([^\"']+)[\"']"),
        r"\1'" + REDACTED + "'",
    ),
    (
        re.compile(r"(?i)\b(mcp-session-id|authorization|cookie|set-cookie)(\s*[:=]\s*)\S+"),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"\bo[un]_[A-Za-z0-9_]{8,}"), _feishu_user),
    (re.compile(r"[A-Za-z0-9_\-=]{32,}"), _opaque),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# -- context ------------------------------------------------------------------------------


def new_request_id() -> str:
    return secrets.token_hex(6)


def bind(
    *, request_id: str | None = None, user: str | None = None, instance: str | None = None
) -> None:
    """Set the given context fields for the rest of this task (and tasks it starts)."""
    if request_id is not None:
        _request_id.set(request_id)
    if user is not None:
        _user.set(user)
    if instance is not None:
        _instance.set(instance)


def bind_user_id(user_id: str | None) -> None:
    """Bind a raw Feishu user id; only its hash is kept."""
    if user_id is not None:
        _user.set(user_key(user_id))


def reset_context() -> None:
    _request_id.set(None)
    _user.set(None)
    _instance.set(None)


def current_context() -> dict[str, str | None]:
    return {"request_id": _request_id.get(), "user": _user.get(), "instance": _instance.get()}


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class RedactingFilter(logging.Filter):
    """Scrubs the message itself, for handlers that do not use the formatters below."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


# -- formats ------------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, request_id, user, instance[, exc]."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            line[name] = getattr(record, name, None)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """What a person reads on a terminal: time, level, logger, context, message."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        )
        text = f"{_timestamp(record)} {record.levelname:<7} {record.name}"
        text += f" [{context}]" if context else ""
        text += f": {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


def make_formatter(fmt: LogFormat | str, stream: IO[str]) -> logging.Formatter:
    chosen = LogFormat(fmt)
    if chosen is LogFormat.AUTO:
        is_tty = getattr(stream, "isatty", lambda: False)()
        chosen = LogFormat.TEXT if is_tty else LogFormat.JSON
    return TextFormatter() if chosen is LogFormat.TEXT else JsonFormatter()


def setup_logging(
    level: str, fmt: LogFormat | str = LogFormat.AUTO, stream: IO[str] | None = None
) -> logging.Handler:
    """Route every logger through one redacting handler on ``stream`` (stderr by default)."""
    target = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(target)
    handler.setFormatter(make_formatter(fmt, target))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The access log prints query strings, which carry session ids and OAuth codes.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return handler
