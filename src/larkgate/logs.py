"""Logging set-up: one format for the whole gateway and a filter that scrubs secrets.

Loggers are named after modules; lines carry hashed user ids. The filter is the last line of
defence: it removes bearer tokens, Feishu tokens, codes, states and session ids that a message
might still carry.
"""

from __future__ import annotations

import logging
import re
import sys

_SECRET_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\b(u|ur|t)-[A-Za-z0-9._-]{8,}"), r"\1-[redacted]"),
    (
        re.compile(
            r"(?i)\b(code|state|sessionId|session_id|access_token|refresh_token|"
            r"client_secret|code_verifier|key)=([^&\s\"']+)"
        ),
        r"\1=[redacted]",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The access log prints query strings, which carry session ids and OAuth codes.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
