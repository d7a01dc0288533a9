"""Replies go out as compact UTF-8 JSON, whatever text a tool returns."""

from __future__ import annotations

import json

from larkgate.transports.common import reply_bytes

CHINESE = "会议纪要 下周一上午十点 📅"


def test_non_ascii_text_is_sent_as_utf8_not_escaped() -> None:
    """Escaped, Chinese doubles and emoji triple, and SSE clients cap an event at 1 MiB."""
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"text": CHINESE * 1000}]}}
    sent = reply_bytes(reply)
    assert json.loads(sent) == reply
    assert CHINESE.encode() in sent
    assert len(sent) < len(json.dumps(reply).encode()) / 2


def test_a_lone_surrogate_from_a_tool_still_goes_out_as_valid_json() -> None:
    reply = {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"text": "a\ud800b 会"}]}}
    sent = reply_bytes(reply)
    sent.decode("utf-8")  # valid UTF-8 on the wire
    assert json.loads(sent) == reply
