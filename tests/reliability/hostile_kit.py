"""What the hostile-input tests share: a stranger's view of a gateway with people logged in.

Alfa and Bravo are the people under attack; Charlie is the attacker, logged in as himself;
every input the fuzzer sends must leave Alfa's and Bravo's data out of every answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from larkgate.emulator import RunningEmulator
from support import play_browser_login

from .reliability_kit import emulator_tokens, login_link_in

VICTIMS = ("alfa", "bravo")
ATTACKER = "charlie"
# Logins that would walk out of a directory if an id were ever used as a path.
PATH_TRICK_LOGINS = ("../../escape", "..\\..\\escape")
# "owner" comes first: the emulator makes the first user the owner of a chat everyone sees.
HOSTILE_LOGINS = ("owner", *VICTIMS, ATTACKER, "delta", *PATH_TRICK_LOGINS)


class SseListener:
    """An open HTTP+SSE session: its id, and every message event that arrived on it."""

    def __init__(self, gateway_url: str) -> None:
        self._gateway_url = gateway_url
        self._http = httpx.Client(timeout=httpx.Timeout(30, read=None), trust_env=False)
        self._stream = self._http.stream("GET", f"{gateway_url}/sse")
        self._response = self._stream.__enter__()
        assert self._response.status_code == 200, self._response.read()
        self._lines = self._response.iter_lines()
        endpoint = ""
        for line in self._lines:
            if line.startswith("data: /messages"):
                endpoint = line.removeprefix("data: ")
                break
        self.session_id = endpoint.split("sessionId=", 1)[1]
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._lines:
                if line.startswith("data: "):
                    with self._arrived:
                        self.messages.append(line.removeprefix("data: "))
                        self._arrived.notify_all()
        except (httpx.HTTPError, RuntimeError):
            return  # closed by close(), or by the gateway

    def wait_for_reply(self, request_id: Any, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for text in self.messages:
                reply = json.loads(text)
                if isinstance(reply, dict) and reply.get("id") == request_id:
                    return reply
            return None

        with self._arrived:
            assert self._arrived.wait_for(lambda: found() is not None, timeout), request_id
            reply = found()
            assert reply is not None
            return reply

    def login_link(self) -> str:
        """The login link the gateway gives this session's client in ``initialize``."""
        initialize = {
            "jsonrpc": "2.0",
            "id": "login-link",
            "method": "initialize",
            "params": {"protocolVersion": "2024-11-05", "capabilities": {}},
        }
        posted = self._http.post(
            f"{self._gateway_url}/messages", params={"sessionId": self.session_id}, json=initialize
        )
        assert posted.status_code == 202, posted.text
        return login_link_in(self.wait_for_reply("login-link")["result"]["instructions"])

    def close(self) -> None:
        # Closing the response from this thread does not wake the reader's blocking recv;
        # shutting the socket down does.
        network = self._response.extensions.get("network_stream")
        raw = network.get_extra_info("socket") if network is not None else None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        self._response.close()
        self._http.close()
        self._reader.join(10)


@dataclass
class Secrets:
    """What must never reach a stranger: the victims' names, ids, tokens and session ids."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str | None) -> None:
        if value:
            self.values[label] = value

    def add_tokens(self, emulator: RunningEmulator, login: str, open_id: str) -> None:
        described = emulator_tokens(emulator, open_id)
        for n, grant in enumerate(described.get("grants", [])):
            self.add(f"{login} access token {n}", grant["access_token"])
            self.add(f"{login} refresh token {n}", grant["refresh_token"])

    def found_in(self, answer: str, sent: str = "") -> list[str]:
        """Labels of secrets in an answer that the request did not itself carry."""
        return [label for label, v in self.values.items() if v in answer and v not in sent]


def sse_login(listener: SseListener, login: str) -> None:
    page = play_browser_login(listener.login_link(), login)
    assert page.status_code == 200, page.text


def wait_until(condition: Any, timeout: float = 30, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
