"""Oversized requests and slow clients (slowloris) against `larkgate serve` itself.

They run against the real process because the HTTP server's settings live in `larkgate serve`
(uvicorn's protocol, its limits and deadlines), not in the app. What they pin: a request head
is bounded in size and in time, a body in size and in time, a client that hangs up is not an
error, and a crowd of slow clients does not stop anyone else being served. uvicorn sets no
limit on connections, so file descriptors are the last bound on a crowd; that is reported.
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from larkgate.config import Settings
from larkgate.emulator import RunningEmulator
from support import free_port

from .reliability_kit import (
    ACCEPT,
    INIT,
    LONG,
    STALL_DEADLINE,
    ServeProcess,
    emulator_config,
    report,
)

# A client that has sent nothing, half a head, or part of its body must be cut off once the
# gateway's deadline for it passes; the slack is for a loaded CI machine.
CUT_OFF_WITHIN = STALL_DEADLINE + 4
SLOW_CLIENTS = 2000 if LONG else 200
# How much of one endless request head a test sends before calling it buffered.
HEAD_FLOOD = 32 << 20


@dataclass
class Server:
    url: str
    port: int
    log: Path
    process: psutil.Process

    def tracebacks(self) -> int:
        text = self.log.read_text(errors="replace")
        return text.count("Traceback (most recent call last)")


@pytest.fixture(scope="module")
def gateway(served: ServeProcess) -> Server:
    assert served.log_path is not None
    return Server(served.url, served.port, served.log_path, served.ps)


def _connect(gateway: Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def _state(sock: socket.socket) -> str:
    """'open', or what the server did: 'closed', or the status line it answered."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    finally:
        sock.setblocking(True)
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def _status_of(sock: socket.socket, timeout: float = 60) -> str:
    """The status line of the server's answer, or 'closed' if it hung up without one."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except OSError:
        return "closed"
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"


def _send_all_or_stop(sock: socket.socket, chunks: Iterator[bytes]) -> None:
    """Send until the server stops reading (it may answer early and close)."""
    with contextlib.suppress(OSError):
        for chunk in chunks:
            sock.sendall(chunk)


def _others_are_served(gateway: Server) -> dict[str, Any]:
    with httpx.Client(base_url=gateway.url, timeout=120, trust_env=False) as http:
        health = http.get("/health")
        tools = http.get("/tools")
        session = http.post("/mcp", json=INIT, headers=ACCEPT)
    assert health.status_code == 200, health.text
    assert tools.status_code == 200 and tools.json()["tools"], tools.text
    assert session.status_code == 200, session.text
    return {"health": health.status_code, "tools": len(tools.json()["tools"])}


def _request_head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_oversized_requests_are_refused_and_harm_nobody(gateway: Server) -> None:
    limit = Settings.model_fields["max_body_bytes"].default
    answers: dict[str, str] = {}
    mcp_head = {"Accept": ACCEPT["Accept"], "Content_Type": "application/json"}
    tracebacks = gateway.tracebacks()
    declared = _connect(gateway, _request_head("/mcp", Content_Length="10000000", **mcp_head))
    _send_all_or_stop(declared, iter([b"[" * 65536]))
    answers["declared 10 MB body"] = _status_of(declared)

    chunked = _connect(gateway, _request_head("/mcp", Transfer_Encoding="chunked", **mcp_head))
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    _send_all_or_stop(chunked, iter([piece] * (4 * limit // 65536 + 2) + [b"0\r\n\r\n"]))
    answers["chunked body 4x the limit"] = _status_of(chunked)

    sse_body = _connect(
        gateway, _request_head("/messages?sessionId=x", Transfer_Encoding="chunked")
    )
    _send_all_or_stop(sse_body, iter([piece] * 4 + [b"0\r\n\r\n"]))
    answers["chunked body to /messages"] = _status_of(sse_body)

    big_head = _connect(
        gateway,
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
    )
    answers["1 MB header"] = _status_of(big_head)

    many = b"".join(b"X-%d: y\r\n" % n for n in range(20_000))
    many_heads = _connect(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    answers["20000 headers"] = _status_of(many_heads)
    for sock in (declared, chunked, sse_body, big_head, many_heads):
        sock.close()
    served = _others_are_served(gateway)

    report(f"hostile connections: oversized requests -> {answers}; then {served}")
    assert not [what for what, status in answers.items() if " 500 " in status], answers
    assert answers["declared 10 MB body"].startswith("HTTP/1.1 413")
    assert answers["chunked body 4x the limit"].startswith("HTTP/1.1 413")
    assert gateway.tracebacks() == tracebacks


def test_the_tail_of_a_refused_body_is_not_taken_for_the_next_request_head(
    gateway: Server,
) -> None:
    """A body over the limit is answered 413 before it has all arrived; the rest of it must
    not count against the size of the next request's head on the same connection."""
    limit = Settings.model_fields["max_body_bytes"].default
    mcp_head = {"Accept": ACCEPT["Accept"], "Content_Type": "application/json"}
    body = b"[" + b" " * (2 * limit) + b"]"
    sock = _connect(gateway)
    try:
        sock.sendall(_request_head("/mcp", Content_Length=str(len(body)), **mcp_head))
        _send_all_or_stop(sock, iter([body[i : i + 65536] for i in range(0, len(body), 65536)]))
        answers = sock.recv(65536)
        _send_all_or_stop(sock, iter([b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]))
        answers += _read_for(sock, 2.0)
    finally:
        sock.close()
    statuses = [line.decode() for line in re.findall(rb"HTTP/1\.1 \d{3}[^\r]*", answers)]
    assert statuses == ["HTTP/1.1 413 Request Entity Too Large", "HTTP/1.1 200 OK"], statuses


def _read_for(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends within ``seconds`` (or until it hangs up)."""
    sock.settimeout(seconds)
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_an_endless_request_head_is_cut_off_before_it_fills_memory(gateway: Server) -> None:
    """A head that never ends must be refused early, not buffered: RSS is the gateway's."""
    sent = 0
    before = gateway.process.memory_info().rss
    peak = before
    answer = "open"
    sock = _connect(gateway, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    try:
        while sent < HEAD_FLOOD and answer == "open":
            try:
                sock.sendall(b"a" * (1 << 20))
            except OSError:
                answer = "closed"
                break
            sent += 1 << 20
            answer = _state(sock)
            peak = max(peak, gateway.process.memory_info().rss)
    finally:
        sock.close()
    report(
        f"hostile connections: an endless request head: {answer!r} after {sent >> 20} MiB sent; "
        f"gateway RSS grew {(peak - before) >> 20} MiB meanwhile"
    )
    assert answer != "open", f"the gateway buffered a {sent >> 20} MiB request head"


def test_many_slow_clients_do_not_stop_others_being_served(gateway: Server) -> None:
    port_head = _request_head(
        "/mcp", Content_Length="1000", Accept=ACCEPT["Accept"], Content_Type="application/json"
    )
    kinds = {
        "silent": b"",
        "half a head": b"GET /health HTTP/1.1\r\nHost: x\r\n",
        "half a body": port_head + b'{"jsonrpc"',
        "an SSE stream nobody reads": b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    held: list[socket.socket] = []
    tracebacks = gateway.tracebacks()
    try:
        for n in range(SLOW_CLIENTS):
            held.append(_connect(gateway, list(kinds.values())[n % len(kinds)]))
        served = _others_are_served(gateway)
        still_open = sum(_state(sock) == "open" for sock in held)
    finally:
        for sock in held:
            sock.close()
    # Give the gateway a moment to see every client hang up.
    time.sleep(2.0)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    left = gateway.tracebacks() - tracebacks
    report(
        f"hostile connections: {SLOW_CLIENTS} slow clients ({', '.join(kinds)}) held, "
        f"{still_open} still open, others served: {served}; past max_connections "
        f"({Settings.model_fields['max_connections'].default}) new requests get 503, below "
        f"RLIMIT_NOFILE {soft}; hanging up left {left} tracebacks in the gateway's log"
    )
    assert left == 0


def test_a_client_hanging_up_mid_body_leaves_no_traceback(gateway: Server) -> None:
    """Hanging up is ordinary; a traceback per hang-up lets anyone flood the error log."""
    head = _request_head(
        "/mcp", Content_Length="1000", Accept=ACCEPT["Accept"], Content_Type="application/json"
    )
    tracebacks = gateway.tracebacks()
    sock = _connect(gateway, head + b'{"jsonrpc"')
    time.sleep(0.5)
    sock.close()
    time.sleep(1.0)
    _others_are_served(gateway)
    assert gateway.tracebacks() == tracebacks


def test_a_client_that_stalls_its_request_is_cut_off(gateway: Server) -> None:
    """Slowloris: sending nothing, a head a line at a time, or a body a byte at a time."""
    body_head = _request_head(
        "/mcp", Content_Length="1000", Accept=ACCEPT["Accept"], Content_Type="application/json"
    )
    stalled = {
        "sends nothing": _connect(gateway),
        "dribbles its head": _connect(gateway, b"POST /mcp HTTP/1.1\r\nHost: x\r\n"),
        "dribbles its body": _connect(gateway, body_head + b"{"),
    }
    dribble = {"dribbles its head": b"X-Slow: y\r\n", "dribbles its body": b" "}
    cut_after: dict[str, float] = {}
    started = time.monotonic()
    try:
        while len(cut_after) < len(stalled) and time.monotonic() - started < CUT_OFF_WITHIN:
            time.sleep(1.0)
            for what, sock in stalled.items():
                if what in cut_after:
                    continue
                if _state(sock) != "open":
                    cut_after[what] = time.monotonic() - started
                elif what in dribble:
                    with contextlib.suppress(OSError):
                        sock.sendall(dribble[what])
    finally:
        for sock in stalled.values():
            sock.close()
    held = [what for what in stalled if what not in cut_after]
    report(
        f"hostile connections: with {STALL_DEADLINE:g}s deadlines (defaults: head "
        f"{Settings.model_fields['head_timeout'].default:g}s, body "
        f"{Settings.model_fields['body_timeout'].default:g}s), stalled requests cut off after "
        f"{ {what: round(after, 1) for what, after in cut_after.items()} }; still held after "
        f"{CUT_OFF_WITHIN:g}s: {held}"
    )
    assert held == [], f"clients that {', '.join(held)} hold their connection indefinitely"


def test_past_max_connections_new_requests_get_503_until_clients_leave(
    tmp_path: Path,
) -> None:
    """The connection cap keeps file descriptors for children and the store; it must answer
    clearly while it holds, and let people in again once the hoarder leaves."""
    cap = 10
    with RunningEmulator(emulator_config(1)) as emulator:
        serve = ServeProcess(
            tmp_path / "data", emulator, free_port(), {"LARKGATE_MAX_CONNECTIONS": str(cap)}
        )
        try:
            serve.start()
            hoard = [
                socket.create_connection(("127.0.0.1", serve.port), timeout=30)
                for _ in range(cap + 2)
            ]
            with httpx.Client(base_url=serve.url, timeout=30, trust_env=False) as http:
                try:
                    refused = http.get("/health")
                finally:
                    for sock in hoard:
                        sock.close()
                again = _wait_for_status(http, "/health", 200)
        finally:
            serve.cleanup()
    report(
        f"hostile connections: {cap + 2} idle sockets past a cap of {cap}: /health answered "
        f"{refused.status_code}; once they left, {again}"
    )
    assert refused.status_code == 503
    assert again == 200


def _wait_for_status(http: httpx.Client, path: str, status: int, within: float = 30) -> int:
    deadline = time.monotonic() + within
    while True:
        answer = http.get(path).status_code
        if answer == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)
