"""HTTP/1.1 framing an unlucky or hostile client may send to `larkgate serve`: pipelining, heads
in tiny pieces or right at the size bound, ``Expect: 100-continue``, chunked bodies, HTTP/1.0,
and a request framed two ways at once. Each gets the right answer and the gateway stays well.

They run against the real process because the HTTP server's protocol and its limits are set
up by `larkgate serve` (see test_hostile_connections.py).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from larkgate.config import Settings

from .reliability_kit import ACCEPT, INIT, ServeProcess

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
MAX_HEAD = Settings.model_fields["max_head_bytes"].default
INIT_BODY = json.dumps(INIT).encode()
MCP_HEAD = (
    "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Accept: {ACCEPT['Accept']}\r\nContent-Type: application/json\r\n"
)


@pytest.fixture(scope="module")
def gateway(served: ServeProcess) -> Iterator[ServeProcess]:
    before = _tracebacks(served)
    yield served
    assert _tracebacks(served) == before, served.log_tail()
    with httpx.Client(base_url=served.url, timeout=60, trust_env=False) as http:
        assert http.get("/health").status_code == 200
        assert http.post("/mcp", json=INIT, headers=ACCEPT).status_code == 200


def _tracebacks(served: ServeProcess) -> int:
    assert served.log_path is not None
    return served.log_path.read_text(errors="replace").count("Traceback (most recent call")


def _exchange(gateway: ServeProcess, *writes: bytes, pause: float = 0.0) -> bytes:
    """Send the writes on one connection (each alone when ``pause`` is set) and read until
    the gateway hangs up."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in writes:
            sock.sendall(piece)
            time.sleep(pause)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _statuses(answer: bytes) -> list[int]:
    """The status of each response in what came back, in order."""
    return [int(status) for status in STATUS_LINE.findall(answer)]


def _health(pad_to: int = 0, *, last: bool = True) -> bytes:
    """GET /health, padded with one header to exactly ``pad_to`` bytes of head."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    end = b"Connection: close\r\n\r\n" if last else b"\r\n"
    if pad_to:
        padding = pad_to - len(head) - len(end) - len(b"X-Pad: \r\n")
        head += b"X-Pad: " + b"a" * padding + b"\r\n"
    return head + end


def _initialize(framing: str = "length", extra: str = "") -> bytes:
    if framing == "chunked":
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(INIT_BODY), INIT_BODY)
        return (MCP_HEAD + extra + "Transfer-Encoding: chunked\r\n\r\n").encode() + body
    return (MCP_HEAD + extra + f"Content-Length: {len(INIT_BODY)}\r\n\r\n").encode() + INIT_BODY


def test_pipelined_requests_on_one_connection_are_answered_in_order(
    gateway: ServeProcess,
) -> None:
    answer = _exchange(
        gateway,
        _health(last=False)
        + _initialize()
        + _initialize("chunked")
        + b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        + _health(),
    )
    assert _statuses(answer) == [200, 200, 200, 405, 200], answer[-500:]
    assert answer.count(b"mcp-session-id: ") == 2


def test_a_head_sent_a_byte_at_a_time_within_the_deadline_is_served(
    gateway: ServeProcess,
) -> None:
    head = _health()
    answer = _exchange(gateway, *(head[n : n + 1] for n in range(len(head))), pause=0.005)
    assert _statuses(answer) == [200]


@pytest.mark.parametrize("writes", [1, 2], ids=["in one write", "in two writes"])
def test_a_head_at_the_size_bound_is_served_and_one_byte_more_is_431(
    gateway: ServeProcess, writes: int
) -> None:
    """The read that completed a head was never counted, so a head over the bound passed
    whenever its last read took it over (``MAX_HEAD + 1`` bytes as two writes 50 ms apart:
    200), or it arrived in one read."""
    for size, status in ((MAX_HEAD, 200), (MAX_HEAD + 1, 431)):
        head = _health(size)
        assert len(head) == size
        cut = len(head) // 2 if writes == 2 else len(head)
        answer = _exchange(gateway, head[:cut], head[cut:], pause=0.05)
        assert _statuses(answer) == [status], (size, answer[:200])


def test_a_request_whose_head_and_large_body_arrive_in_one_read_is_served(
    gateway: ServeProcess,
) -> None:
    """A read that began before a head and ended after the request it held was counted whole
    as head: a 60 KB initialize sent in one write (one read) got 431."""
    padded = b" " * 60_000 + INIT_BODY
    request = MCP_HEAD.encode() + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(padded)
    answer = _exchange(gateway, request + padded)
    assert _statuses(answer) == [200], answer[:200]


def test_expect_100_continue_gets_100_then_the_answer(gateway: ServeProcess) -> None:
    head, body = _initialize(extra="Expect: 100-continue\r\nConnection: close\r\n").split(
        b"\r\n\r\n", 1
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(head + b"\r\n\r\n")
        interim = sock.recv(65536)
        sock.sendall(body)
        final = b""
        while chunk := sock.recv(65536):
            final += chunk
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert _statuses(final) == [200] and b"mcp-session-id: " in final


def test_a_chunked_body_cut_into_pieces_is_read_whole(gateway: ServeProcess) -> None:
    request = _initialize("chunked", extra="Connection: close\r\n")
    answer = _exchange(gateway, *(request[n : n + 7] for n in range(0, len(request), 7)))
    assert _statuses(answer) == [200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["result"]["serverInfo"]["name"]


def test_http_1_0_requests_are_answered_and_the_connection_closed(
    gateway: ServeProcess,
) -> None:
    health = _exchange(gateway, b"GET /health HTTP/1.0\r\n\r\n")
    session = _exchange(gateway, _initialize().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert _statuses(health) == [200] and b'"status"' in health
    assert _statuses(session) == [200] and b"mcp-session-id: " in session


def test_a_request_with_content_length_and_transfer_encoding_is_refused(
    gateway: ServeProcess,
) -> None:
    """Framed two ways at once, a request could be read differently by a proxy in front and
    smuggle a second one past it; it gets 400 and the connection is closed."""
    chunked = _initialize("chunked")
    both = chunked.replace(b"Transfer-Encoding", b"Content-Length: 5\r\nTransfer-Encoding", 1)
    answer = _exchange(gateway, both + _health())
    assert _statuses(answer) == [400]
