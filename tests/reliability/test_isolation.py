"""What keeps one person's Feishu access from everyone else on the machine.

Checked on `larkgate serve` run as an operator runs it: children listen on loopback only,
hold no user token in their environment or argv, nothing under the data directory holds a
token in clear or can be read by another local account, and a local process that talks to a
child's port directly (without going through the gateway) gets nobody's data.

What this isolation is, honestly: a child's port has no authentication of its own. Any local
process, of any account, can connect to 127.0.0.1:PORT and call tools; it gets nothing of a
user because the child keeps no token and acts only with the Bearer token each request
brings. The flip side is that the gateway hands a user's token to whatever answers on that
port, which is why the last test here checks who is listening there.
"""

from __future__ import annotations

import json
import queue
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

import larkgate.instances.spawner as spawner_module
from larkgate.emulator import RunningEmulator
from support import GatewayServer, login_link_in, play_browser_login

from .reliability_kit import (
    ACCEPT,
    CALL,
    ServeProcess,
    call_chat_list,
    issued_tokens,
    log_in,
    own_chat,
    report,
    result_text,
)

PEOPLE = ["alfa", "bravo"]


@dataclass
class Deployment:
    serve: ServeProcess
    emulator: RunningEmulator
    sessions: dict[str, str]
    open_ids: list[str]

    def secrets(self) -> dict[str, str]:
        """Every token and session id of the people, labelled, as of now."""
        found = {f"token {t[:6]}...": t for t in issued_tokens(self.emulator, self.open_ids)}
        found.update({f"{login}'s session id": s for login, s in self.sessions.items()})
        return found

    def children(self) -> list[psutil.Process]:
        found = []
        for child in self.serve.children():
            found.append(child)
            found.extend(child.children(recursive=True))
        return found


@pytest.fixture(scope="module")
def deployment(served: ServeProcess) -> Deployment:
    emulator = served.emulator
    sessions = {login: log_in(served.url, login) for login in PEOPLE}
    with ThreadPoolExecutor(len(PEOPLE)) as calls:
        replies = {p: calls.submit(_call, served.url, s) for p, s in sessions.items()}
        for login, reply in replies.items():
            assert own_chat(login) in reply.result(300)
    open_ids = []
    for login in PEOPLE:
        person = emulator.state.config.find_user(login)
        assert person is not None
        open_ids.append(person.open_id)
    return Deployment(served, emulator, sessions, open_ids)


def _call(url: str, session_id: str) -> str:
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
        return result_text(call_chat_list(http, session_id).json())


def test_every_child_listens_on_loopback_only(deployment: Deployment) -> None:
    listening: dict[int, list[str]] = {}
    for process in deployment.children():
        sockets = process.net_connections(kind="inet")
        listening[process.pid] = [
            f"{c.laddr.ip}:{c.laddr.port}" for c in sockets if c.status == psutil.CONN_LISTEN
        ]
    report(f"isolation: children listening: {listening}")
    assert len([pid for pid, found in listening.items() if found]) >= len(PEOPLE) + 1
    everywhere = [a for found in listening.values() for a in found if not a.startswith("127.")]
    assert everywhere == []


def test_no_child_holds_a_user_token_in_its_environment_or_argv(deployment: Deployment) -> None:
    secrets = deployment.secrets()
    assert secrets
    found: dict[int, list[str]] = {}
    names: set[str] = set()
    for process in deployment.children():
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        names.update(v.split(b"=", 1)[0].decode() for v in environ.split(b"\0") if v)
        leaked = [label for label, value in secrets.items() if value.encode() in environ + argv]
        if leaked:
            found[process.pid] = leaked
    report(
        f"isolation: {len(deployment.children())} child processes; environment variables they "
        f"hold: {sorted(names)} (APP_SECRET is the app's, no user's; environ is readable by "
        "the gateway's account and root only)"
    )
    assert found == {}


def test_no_token_or_session_id_is_written_in_clear(deployment: Deployment) -> None:
    secrets = deployment.secrets()
    files = [p for p in deployment.serve.data_dir.rglob("*") if p.is_file()]
    assert deployment.serve.log_path is not None
    files.append(deployment.serve.log_path)
    found = {
        str(path): leaked
        for path in files
        if (leaked := [label for label, v in secrets.items() if v.encode() in path.read_bytes()])
    }
    report(f"isolation: {len(files)} files searched for {len(secrets)} secrets in clear")
    assert found == {}


def test_every_file_under_the_data_dir_is_private_to_the_gateway_account(
    deployment: Deployment,
) -> None:
    """0600 files and 0700 directories, so no other local account can read a thing."""
    data_dir = deployment.serve.data_dir
    open_to_others = {
        str(path.relative_to(data_dir.parent)): oct(stat.S_IMODE(path.lstat().st_mode))
        for path in [data_dir, *data_dir.rglob("*")]
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    }
    report(f"isolation: paths under the data dir open to group or others: {open_to_others}")
    assert open_to_others == {}


def test_a_local_process_calling_a_childs_port_directly_gets_nobodys_data(
    deployment: Deployment,
) -> None:
    """Whatever a child speaks (SSE or Streamable HTTP), a stranger's own requests to it act
    as nobody, and messages to a session the stranger guessed go nowhere."""
    ports = sorted(
        {
            c.laddr.port
            for p in deployment.children()
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
    )
    names = [login.capitalize() for login in PEOPLE]
    secrets = {**deployment.secrets(), **dict(zip(names, names, strict=True))}
    secrets.update({f"open_id {n}": open_id for n, open_id in enumerate(deployment.open_ids)})
    # Asking for the app's own (tenant) token instead of a user's must get nothing either.
    as_app = {**CALL, "params": {"name": CALL["params"]["name"], "arguments": {"useUAT": False}}}
    before = len(deployment.emulator.state.calls)
    answers: list[str] = []
    with httpx.Client(timeout=60, trust_env=False) as http:
        for port in ports:
            base = f"http://127.0.0.1:{port}"
            for bearer in (None, "larkgate-per-request", "u-guessed"):
                answers.append(_direct_call(http, base, bearer, CALL))
            answers.append(_direct_call(http, base, None, as_app))
            guessed = http.post(
                f"{base}/messages", params={"sessionId": str(uuid.uuid4())}, json=CALL
            )
            answers.append(f"{guessed.status_code} {guessed.text}")
    reached = deployment.emulator.state.calls.matching()[before:]

    leaked = [label for label, v in secrets.items() if any(v in a for a in answers)]
    as_someone = [c.path for c in reached if c.open_id in deployment.open_ids]
    as_the_app = [c.path for c in reached if c.token_kind in ("tenant", "app")]
    report(
        f"isolation: {len(answers)} direct requests to {len(ports)} child ports; Feishu saw "
        f"{len(reached)} calls from them, as: {sorted({c.token_kind for c in reached})}; "
        f"a guessed child session: {answers[-1][:80]!r}"
    )
    assert len(reached) >= len(ports), "the direct tool calls never reached Feishu"
    assert leaked == []
    assert as_someone == []
    assert as_the_app == []


def _direct_call(
    http: httpx.Client, base: str, bearer: str | None, message: dict[str, Any]
) -> str:
    """A tool call straight to a child, in whichever of its transports answers."""
    auth = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    posted = http.post(f"{base}/mcp", json=message, headers={**ACCEPT, **auth})
    if posted.status_code not in (404, 405):
        return posted.text
    with http.stream("GET", f"{base}/sse", headers={"Accept": "text/event-stream", **auth}) as sse:
        lines = sse.iter_lines()
        endpoint = next(line for line in lines if line.startswith("data:"))[5:].strip()
        sent = http.post(f"{base}{endpoint}", json=message, headers=auth)
        for line in lines:
            if line.startswith("data:") and f'"id":{message["id"]}' in line.replace(" ", ""):
                return f"{sent.status_code} {line}"
    raise AssertionError(f"no answer from {base}")


class Squatter(ThreadingHTTPServer):
    """Listens on 127.0.0.1 and answers like a lark-mcp child would, in either transport."""

    daemon_threads = True

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.replies: queue.Queue[bytes | None] = queue.Queue()
        super().__init__(("127.0.0.1", 0), _SquatterHandler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.replies.put(None)
        self.shutdown()
        self.server_close()


class _SquatterHandler(BaseHTTPRequestHandler):
    server: Squatter

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("authorization") or "")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"event: endpoint\ndata: /messages?sessionId=squatted\n\n")
        self.wfile.flush()
        while (reply := self.server.replies.get()) is not None:
            self.wfile.write(b"event: message\ndata: " + reply + b"\n\n")
            self.wfile.flush()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.authorizations.append(self.headers.get("authorization") or "")
        request = json.loads(body or b"{}")
        answer = {"jsonrpc": "2.0", "id": request.get("id"), "result": {"content": []}}
        payload = json.dumps(answer).encode()
        if self.path.startswith("/messages"):
            self.server.replies.put(payload)
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_a_process_squatting_a_new_childs_port_never_receives_a_users_token(
    attacked_gateway: GatewayServer,
    attacked_emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another local process takes the port the gateway picked for a child before it binds.

    The gateway picks a free port, closes it and tells the child to listen there; whoever
    listens there first answers the readiness ping, and gets every request of that user.
    """
    gateway, emulator = attacked_gateway, attacked_emulator
    delta = emulator.state.config.find_user("delta")
    assert delta is not None
    with httpx.Client(base_url=gateway.url, timeout=120, trust_env=False) as http:
        initialized = http.post(
            "/mcp", json={**CALL, "id": 1, "method": "initialize"}, headers=ACCEPT
        )
        session_id = initialized.headers["mcp-session-id"]
        link = login_link_in(initialized.json()["result"]["instructions"])
        assert play_browser_login(link, "delta").status_code == 200

        squatter = Squatter()
        picked: list[int] = []
        real_free_port = spawner_module.free_port

        def squatted_port() -> int:
            if picked:
                return real_free_port()
            picked.append(squatter.port)
            return squatter.port

        monkeypatch.setattr(spawner_module, "free_port", squatted_port)
        try:
            http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
        finally:
            squatter.close()
    tokens = issued_tokens(emulator, [delta.open_id])
    stolen = [a for a in squatter.authorizations if any(t in a for t in tokens)]
    assert picked == [squatter.port], "the gateway never picked the squatted port"
    report(
        f"isolation: a squatter on a new child's port got {len(squatter.authorizations)} "
        f"requests, {len(stolen)} with the user's token"
    )
    assert stolen == []
