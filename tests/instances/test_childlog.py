"""What a child prints reaches its user's log file, with secrets taken out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from larkgate.instances.childlog import ChildLog

TOKEN = "u-7Hq2ZkP0aX9bLmN3cR5tV8wY1dF4gJ6h"


def test_a_token_a_child_prints_never_reaches_its_log_file(tmp_path: Path) -> None:
    """The Feishu SDK prints a failed request with its headers; the user's token is in one."""
    printed = [
        b"[error] request failed: {'headers': {'Authorization': 'Bearer "
        + TOKEN.encode()
        + b"'}}\n",
        b"user_access_token=" + TOKEN.encode() + b" rejected\n",
        "\u4f1a\u8bdd\u5df2\u5efa\u7acb \U0001f4e1 port 4100\n".encode(),
    ]
    log = ChildLog(tmp_path / "logs" / "user.log")

    async def drain() -> None:
        stream = asyncio.StreamReader()
        for line in printed:
            stream.feed_data(line)
        stream.feed_eof()
        await log.drain(stream)

    asyncio.run(drain())
    log.close()
    written = (tmp_path / "logs" / "user.log").read_text()
    assert TOKEN not in written
    assert TOKEN[2:] not in written
    assert written.count("\n") == 3
    assert "request failed" in written and "rejected" in written
    assert "\u4f1a\u8bdd\u5df2\u5efa\u7acb \U0001f4e1 port 4100" in written
