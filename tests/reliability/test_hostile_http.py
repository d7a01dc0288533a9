"""A stranger throws everything at every HTTP route while two people are logged in.

Charlie (logged in as himself) and anonymous clients send fuzzed requests to every route the
running gateway has, fuzzed JSON-RPC to both transports, guessed, reused and crossed session
ids, and ids with path tricks. Nothing may answer 500, nothing may go unhandled, and no answer
may carry Alfa's or Bravo's name, ids, tokens or session ids. Hypothesis runs derandomized with
a fixed number of examples, so CI sees the same inputs every time; LARKGATE_LONG_TESTS=1 tries
ten times as many.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from larkgate.emulator import RunningEmulator
from support import GatewayServer

from .hostile_kit import (
    ATTACKER,
    PATH_TRICK_LOGINS,
    VICTIMS,
    Secrets,
    SseListener,
    sse_login,
    wait_until,
)
from .reliability_kit import (
    ACCEPT,
    CALL,
    INIT,
    LONG,
    compact,
    error_code,
    log_in,
    log_in_by_link,
    new_streamable_session,
    own_chat,
    report,
    result_text,
    unhandled_errors,
)

SCALE = 10 if LONG else 1
INPUTS: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@dataclass
class World:
    gateway: GatewayServer
    emulator: RunningEmulator
    secrets: Secrets
    alfa_session: str
    alfa_ended: str
    alfa_ended_link: str
    bravo: SseListener
    charlie_session: str
    charlie_sse: SseListener
    decoy_sse: SseListener
    anonymous_session: str
    tools: list[str]


@pytest.fixture(scope="module")
def world(attacked_gateway: GatewayServer, attacked_emulator: RunningEmulator) -> Iterator[World]:
    gateway, emulator = attacked_gateway, attacked_emulator
    with unhandled_errors() as unhandled:
        alfa_session = log_in(gateway.url, "alfa")
        alfa_ended, alfa_ended_link = log_in_by_link(gateway.url, "alfa")
        with httpx.Client(base_url=gateway.url, timeout=60, trust_env=False) as http:
            ended = http.delete("/mcp", headers={**ACCEPT, "Mcp-Session-Id": alfa_ended})
            assert ended.status_code == 204
            anonymous_session, _ = new_streamable_session(http)
            tools = [t["name"] for t in http.get("/tools").json()["tools"]]
        bravo = SseListener(gateway.url)
        sse_login(bravo, "bravo")
        charlie_sse = SseListener(gateway.url)
        sse_login(charlie_sse, ATTACKER)
        decoy_sse = SseListener(gateway.url)
        world = World(
            gateway=gateway,
            emulator=emulator,
            secrets=Secrets(),
            alfa_session=alfa_session,
            alfa_ended=alfa_ended,
            alfa_ended_link=alfa_ended_link,
            bravo=bravo,
            charlie_session=log_in(gateway.url, ATTACKER),
            charlie_sse=charlie_sse,
            decoy_sse=decoy_sse,
            anonymous_session=anonymous_session,
            tools=tools,
        )
        _victims_are_served(world)
        _collect_secrets(world)
        try:
            yield world
        finally:
            report(f"hostile http: inputs tried per test: {dict(INPUTS)}")
            report(f"hostile http: unhandled exceptions: {unhandled.summary()}")
            for listener in (bravo, charlie_sse, decoy_sse):
                listener.close()


def _collect_secrets(world: World) -> None:
    for login in VICTIMS:
        person = world.emulator.state.config.find_user(login)
        assert person is not None
        world.secrets.add(f"{login} name", person.name)
        world.secrets.add(f"{login} open_id", person.open_id)
        world.secrets.add(f"{login} union_id", person.union_id)
        world.secrets.add_tokens(world.emulator, login, person.open_id)
    world.secrets.add("alfa session", world.alfa_session)
    world.secrets.add("bravo sse session", world.bravo.session_id)


def _victims_are_served(world: World) -> None:
    """Alfa, Bravo and Charlie each get their own answer (the first time: at once)."""
    people = ((world.alfa_session, "alfa"), (world.charlie_session, "charlie"))
    with ThreadPoolExecutor(len(people) + 1) as calls:
        answers = [calls.submit(_streamable_answer, world, s, login) for s, login in people]
        answers.append(calls.submit(_sse_answer, world))
        for answer in answers:
            answer.result(300)


def _streamable_answer(world: World, session_id: str, login: str) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=120, trust_env=False) as http:
        reply = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    assert own_chat(login) in result_text(reply.json()), reply.text


def _sse_answer(world: World) -> None:
    request_id = secrets.randbelow(1 << 30)
    with httpx.Client(base_url=world.gateway.url, timeout=120, trust_env=False) as http:
        posted = http.post(
            f"/messages?sessionId={world.bravo.session_id}", json={**CALL, "id": request_id}
        )
    assert posted.status_code == 202, posted.text
    assert own_chat("bravo") in result_text(world.bravo.wait_for_reply(request_id))


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _fresh_client(world: World) -> httpx.Client:
    # One connection a request: uvicorn closes a connection whose request raised.
    return httpx.Client(
        base_url=world.gateway.url,
        timeout=120,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


# -- inputs that broke the gateway once: kept as regression tests ------------------------------


def test_an_origin_with_an_unclosed_ipv6_bracket_is_refused_not_a_500(world: World) -> None:
    origin = {"Origin": "http://["}
    with _fresh_client(world) as http:
        answers = {
            "POST /mcp": http.post("/mcp", json=INIT, headers={**ACCEPT, **origin}),
            "POST /messages": http.post(
                f"/messages?sessionId={world.charlie_sse.session_id}", json=CALL, headers=origin
            ),
        }
        with http.stream("GET", "/sse", headers=origin) as stream:
            answers["GET /sse"] = stream
    assert {what: r.status_code for what, r in answers.items()} == dict.fromkeys(answers, 403)


def test_a_deeply_nested_json_body_is_a_parse_error_not_a_500(world: World) -> None:
    nested = b"[" * 50_000 + b"]" * 50_000
    with _fresh_client(world) as http:
        answers = {
            "POST /mcp with a session": http.post(
                "/mcp", content=nested, headers={**ACCEPT, "Mcp-Session-Id": world.charlie_session}
            ),
            "POST /mcp without one": http.post("/mcp", content=nested, headers=ACCEPT),
            "POST /messages": http.post(
                f"/messages?sessionId={world.charlie_sse.session_id}", content=nested
            ),
        }
    statuses = {what: r.status_code for what, r in answers.items()}
    assert statuses == dict.fromkeys(answers, 400), statuses


def test_a_nan_request_id_is_refused_or_answered_in_valid_json(world: World) -> None:
    body = b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}'
    with _fresh_client(world) as http:
        response = http.post(
            "/mcp", content=body, headers={**ACCEPT, "Mcp-Session-Id": world.charlie_session}
        )
    assert response.status_code in (200, 400)
    _strict_json(response.text)


def test_a_message_lark_mcp_refuses_is_the_clients_error_not_an_unavailable_process(
    world: World,
) -> None:
    """Messages a client may send that lark-mcp refuses with HTTP 400 and a JSON-RPC error
    (which ones depends on how the gateway talks to the child: over SSE the gateway's own
    wire ids hide the odd ids from lark-mcp, over Streamable HTTP they do not).

    Calling that "your lark-mcp process is not available; please retry" sends the client
    into retrying a request that can never succeed.
    """
    refused = {
        "fractional id": {"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"},
        "id past 2**53": {"jsonrpc": "2.0", "id": 2**60 + 1, "method": "tools/list"},
        "params as a list": {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": []},
    }
    answers = {}
    with _fresh_client(world) as http:
        for what, message in refused.items():
            response = http.post(
                "/mcp", json=message, headers={**ACCEPT, "Mcp-Session-Id": world.charlie_session}
            )
            answers[what] = response.json()
    outcomes = {
        w: error_code(r) or ("error" if "error" in r else "answered") for w, r in answers.items()
    }
    report(f"hostile http: messages lark-mcp refuses -> {outcomes}")
    blamed = [
        what for what, reply in answers.items() if error_code(reply) == "instance_unavailable"
    ]
    assert blamed == []


# -- sessions: guessed, reused, crossed ---------------------------------------------------------


def test_guessed_session_ids_open_nothing_and_end_nothing(world: World) -> None:
    guesses = [secrets.token_urlsafe(32) for _ in range(20 * SCALE)]
    guesses += [_mutate(world.alfa_session, n) for n in range(5)]
    answers: Counter[str] = Counter()
    with httpx.Client(base_url=world.gateway.url, timeout=60, trust_env=False) as http:
        for guess in guesses:
            header = {**ACCEPT, "Mcp-Session-Id": guess}
            answers[f"POST /mcp {http.post('/mcp', json=CALL, headers=header).status_code}"] += 1
            answers[f"DELETE /mcp {http.delete('/mcp', headers=header).status_code}"] += 1
            posted = http.post(f"/messages?sessionId={guess}", json=CALL)
            answers[f"POST /messages {posted.status_code}"] += 1
            login = http.get("/oauth/start", params={"login": guess})
            answers[f"GET /oauth/start {login.status_code}"] += 1
    INPUTS["guessed session ids"] += 4 * len(guesses)
    report(f"hostile http: {len(guesses)} guessed session ids -> {dict(answers)}")
    assert set(answers) == {
        "POST /mcp 404",
        "DELETE /mcp 404",
        "POST /messages 404",
        "GET /oauth/start 404",
    }
    _victims_are_served(world)


def _mutate(session_id: str, n: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    i = (7 * n + 3) % len(session_id)
    replacement = alphabet[(alphabet.index(session_id[i]) + 1) % len(alphabet)]
    return session_id[:i] + replacement + session_id[i + 1 :]


def test_session_ids_do_not_cross_transports_or_outlive_their_end(world: World) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=60, trust_env=False) as http:
        streamable_on_sse = http.post(f"/messages?sessionId={world.alfa_session}", json=CALL)
        sse_on_streamable = http.post(
            "/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": world.decoy_sse.session_id}
        )
        ended = http.post(
            "/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": world.alfa_ended}
        )
        ended_login = http.get(world.alfa_ended_link)
    assert streamable_on_sse.status_code == 404
    assert sse_on_streamable.status_code == 404
    assert ended.status_code == 404
    assert ended_login.status_code == 404
    for response in (streamable_on_sse, sse_on_streamable, ended, ended_login):
        assert world.secrets.found_in(response.text) == []


def test_an_sse_session_id_sent_to_streamable_http_leaves_that_sse_session_working(
    world: World,
) -> None:
    listener = SseListener(world.gateway.url)
    try:
        with httpx.Client(base_url=world.gateway.url, timeout=60, trust_env=False) as http:
            crossed = http.post(
                "/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": listener.session_id}
            )
            ping = {"jsonrpc": "2.0", "id": "still-there", "method": "ping"}
            posted = http.post(f"/messages?sessionId={listener.session_id}", json=ping)
        assert crossed.status_code == 404
        assert posted.status_code == 202, posted.text
        assert listener.wait_for_reply("still-there")["result"] == {}
    finally:
        listener.close()


def test_the_attackers_calls_reach_only_his_own_child_as_himself(world: World) -> None:
    charlie = world.emulator.state.config.find_user(ATTACKER)
    assert charlie is not None
    before = len(world.emulator.state.calls)
    with httpx.Client(base_url=world.gateway.url, timeout=120, trust_env=False) as http:
        # Ids and names of the victims in the arguments change whose data comes back: nothing.
        arguments = {"params": {"page_size": 5, "user_id_type": "open_id"}}
        for n, extra in enumerate([{}, {"user_access_token": "u-forged"}, {"useUAT": False}]):
            body = {
                "jsonrpc": "2.0",
                "id": n,
                "method": "tools/call",
                "params": {"name": "im_v1_chat_list", "arguments": {**arguments, **extra}},
            }
            reply = http.post(
                "/mcp", json=body, headers={**ACCEPT, "Mcp-Session-Id": world.charlie_session}
            )
            assert world.secrets.found_in(reply.text) == [], reply.text
    reached = world.emulator.state.calls.matching()[before:]
    assert reached and {c.open_id for c in reached} == {charlie.open_id}


# -- path tricks --------------------------------------------------------------------------------


def test_ids_with_path_tricks_never_reach_the_file_system(world: World) -> None:
    data_dir = world.gateway.settings.data_dir
    outside_before = _tree(data_dir.parent)
    with ThreadPoolExecutor(len(PATH_TRICK_LOGINS)) as logins:
        for answer in logins.map(lambda login: _chat_list_of(world, login), PATH_TRICK_LOGINS):
            # The emulator names the chat after the person; JSON escapes their backslashes.
            assert "escape's team chat" in answer, answer
    tricks = ["../../escape", "..%2F..%2Fescape", "/etc/passwd", "..\\..\\escape", "\x00", "."]
    with httpx.Client(base_url=world.gateway.url, timeout=60, trust_env=False) as http:
        for trick in tricks:
            assert http.get("/oauth/start", params={"login": trick}).status_code == 404
            assert (
                http.post("/messages", params={"sessionId": trick}, json=CALL).status_code == 404
            )
    INPUTS["path tricks"] += len(PATH_TRICK_LOGINS) + 2 * len(tricks)

    users_dir = data_dir / "users"
    for path in users_dir.rglob("*"):
        relative = path.relative_to(users_dir)
        assert len(relative.parts[0]) == 16 and set(relative.parts[0]) <= set("0123456789abcdef")
    assert not [p for p in data_dir.rglob("*") if "escape" in p.name]
    created = _tree(data_dir.parent) - outside_before
    assert [p for p in created if not p.is_relative_to(data_dir)] == []


def _chat_list_of(world: World, login: str) -> str:
    session_id = log_in(world.gateway.url, login)
    with httpx.Client(base_url=world.gateway.url, timeout=120, trust_env=False) as http:
        reply = http.post("/mcp", json=CALL, headers={**ACCEPT, "Mcp-Session-Id": session_id})
    return result_text(reply.json())


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# -- the fuzzers --------------------------------------------------------------------------------

PATH_PARAM = re.compile(r"\{[^}]+\}")
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
METHODS = st.sampled_from(
    [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "notifications/initialized",
        "notifications/cancelled",
        "resources/list",
        "prompts/list",
        "logging/setLevel",
        "server/discover",
        "",
        "../tools/call",
    ]
) | st.text(max_size=30)


def _messages(tools: list[str]) -> st.SearchStrategy[Any]:
    tool_call = st.fixed_dictionaries(
        {"name": st.sampled_from(tools) | st.text(max_size=20)},
        optional={"arguments": st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)},
    )
    message = st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0") | JSON_VALUES},
        optional={
            "id": st.integers(-(2**53), 2**53) | st.text(max_size=20) | st.none() | JSON_VALUES,
            "method": METHODS,
            "params": tool_call | JSON_VALUES,
            "result": JSON_VALUES,
            "error": JSON_VALUES,
        },
    )
    return message | st.lists(message, max_size=4) | JSON_VALUES


def _bodies(tools: list[str]) -> st.SearchStrategy[bytes | None]:
    as_json = _messages(tools).map(lambda m: json.dumps(m).encode())
    return st.none() | st.binary(max_size=512) | as_json


def _session_ids(world: World, in_header: bool) -> st.SearchStrategy[str]:
    known = [
        world.charlie_session,
        world.charlie_sse.session_id,
        world.anonymous_session,
        world.alfa_ended,
        _mutate(world.alfa_session, 1),
        _mutate(world.bravo.session_id, 2),
        # Live ids where they mean nothing: in the other transport's slot. (Bravo's own SSE
        # id is kept out of the Mcp-Session-Id header: see the test on crossing transports.)
        world.decoy_sse.session_id if in_header else world.alfa_session,
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "ou_" + "0" * 32,
        "a" * 4096,
    ]
    return st.sampled_from(known) | (HEADER_TEXT if in_header else st.text(max_size=60))


def _origins() -> st.SearchStrategy[str]:
    fixed = ["http://localhost:6274", "https://evil.example", "null", "http://127.0.0.1"]
    return st.sampled_from(fixed) | HEADER_TEXT.map(lambda t: "http://" + t) | HEADER_TEXT


def _headers(world: World) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "Origin": _origins(),
            "Accept": st.sampled_from([ACCEPT["Accept"], "application/json", "*/*", ""])
            | HEADER_TEXT,
            "Content-Type": st.sampled_from(["application/json", "text/plain", ""]) | HEADER_TEXT,
            "Mcp-Session-Id": _session_ids(world, in_header=True),
            "MCP-Protocol-Version": st.sampled_from(["2025-06-18", "2024-11-05", "1999-01-01"])
            | HEADER_TEXT,
            "Authorization": st.sampled_from(["Bearer ", "Basic Og=="])
            | HEADER_TEXT.map(lambda t: "Bearer " + t),
            "Cookie": HEADER_TEXT,
            "Last-Event-ID": HEADER_TEXT,
            "X-Forwarded-For": HEADER_TEXT,
        },
    )


def _queries(world: World) -> st.SearchStrategy[dict[str, str]]:
    names = st.sampled_from(
        [
            "sessionId",
            "login",
            "state",
            "code",
            "error",
            "client_id",
            "redirect_uri",
            "response_type",
        ]
    )
    return st.dictionaries(
        names | st.text(max_size=10),
        _session_ids(world, in_header=False),
        max_size=4,
    )


def _routes(world: World) -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for route in world.gateway.app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str):
            found.append((path, tuple(sorted(methods or {"GET"}))))
    return found


def _send(
    http: httpx.Client,
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    body: bytes | None,
) -> tuple[int, str]:
    encoded = {k: v.strip().encode("latin-1") for k, v in headers.items()}
    request = http.build_request(method, path, params=params, headers=encoded, content=body)
    response = http.send(request, stream=True)
    try:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(response.iter_raw(), b"").decode(errors="replace")
        else:
            text = response.read().decode(errors="replace")
    finally:
        response.close()
    shown = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return response.status_code, shown + "\n\n" + text


def test_fuzzed_requests_to_every_route_never_500_and_never_leak(world: World) -> None:
    routes = _routes(world)
    unknown = [("/", ("GET",)), ("/mcp/", ("POST",)), ("/%2e%2e/etc/passwd", ("GET",))]
    report(f"hostile http: routes fuzzed: {[p for p, _ in routes]}")
    statuses: Counter[int] = Counter()
    verbs = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]

    @fuzz_settings(200)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        template, methods = data.draw(st.sampled_from(routes + unknown), label="route")
        path = PATH_PARAM.sub(
            lambda _: quote(data.draw(_session_ids(world, in_header=False)), safe=""), template
        )
        method = data.draw(st.sampled_from(methods) | st.sampled_from(verbs), label="method")
        params = data.draw(_queries(world), label="query")
        headers = data.draw(_headers(world), label="headers")
        body = data.draw(_bodies(world.tools), label="body")
        sent = f"{path} {params} {headers} {body!r}"
        with _fresh_client(world) as http:
            try:
                status, answer = _send(http, method, path, params, headers, body)
            except httpx.LocalProtocolError:
                return  # httpx itself refused to send it
        INPUTS["routes"] += 1
        statuses[status] += 1
        assert status != 500, f"{method} {path} -> 500 for {compact(sent)}"
        assert world.secrets.found_in(answer, sent) == [], f"{method} {path}: {compact(answer)}"

    with unhandled_errors() as unhandled:
        fuzz()
    report(f"hostile http: route fuzzing statuses {dict(sorted(statuses.items()))}")
    assert INPUTS["routes"] >= 100 * SCALE, "most fuzzed requests were never sent"
    assert unhandled.summary() == []
    _victims_are_served(world)


def test_fuzzed_json_rpc_on_streamable_http_never_500_and_never_leaks(world: World) -> None:
    statuses: Counter[int] = Counter()

    @fuzz_settings(100)
    @given(message=_messages(world.tools))
    def fuzz(message: Any) -> None:
        sent = json.dumps(message)
        session_id = world.charlie_session if INPUTS["json-rpc"] % 2 else world.anonymous_session
        with _fresh_client(world) as http:
            response = http.post(
                "/mcp", content=sent, headers={**ACCEPT, "Mcp-Session-Id": session_id}
            )
        INPUTS["json-rpc"] += 1
        statuses[response.status_code] += 1
        assert response.status_code < 500 or response.status_code == 503, response.text
        assert world.secrets.found_in(response.text, sent) == [], compact(response.text)
        if response.status_code == 200:
            reply = _strict_json(response.text)
            if _valid_request(message) and isinstance(reply, dict):
                assert reply.get("id") == message["id"], compact(response.text)

    with unhandled_errors() as unhandled:
        fuzz()
    report(f"hostile http: JSON-RPC fuzzing statuses {dict(sorted(statuses.items()))}")
    assert unhandled.summary() == []
    _victims_are_served(world)


def _valid_request(message: Any) -> bool:
    """A JSON-RPC 2.0 request whose id the reply must carry back unchanged."""
    return (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and type(message.get("id")) in (int, str)
    )


def test_fuzzed_json_rpc_on_sse_never_500_and_reaches_nobody_else(world: World) -> None:
    statuses: Counter[int] = Counter()
    bravo_heard = len(world.bravo.messages)
    url = f"/messages?sessionId={world.charlie_sse.session_id}"

    @fuzz_settings(50)
    @given(body=_bodies(world.tools))
    def fuzz(body: bytes | None) -> None:
        with _fresh_client(world) as http:
            response = http.post(url, content=body, headers={"Content-Type": "application/json"})
        INPUTS["sse messages"] += 1
        statuses[response.status_code] += 1
        assert response.status_code in (202, 400, 413), response.text

    with unhandled_errors() as unhandled:
        fuzz()
        # Replies keep arriving after the 202s: wait until Charlie's child has none in flight.
        charlie = world.emulator.state.config.find_user(ATTACKER)
        assert charlie is not None
        child = world.gateway.gateway.pool.child_of(charlie.open_id)
        assert wait_until(lambda: child is None or child.in_flight == 0, timeout=120)
    report(f"hostile http: SSE message fuzzing statuses {dict(sorted(statuses.items()))}")
    heard = "\n".join(world.charlie_sse.messages)
    assert world.secrets.found_in(heard) == []
    assert len(world.bravo.messages) == bravo_heard, "bravo's stream carried someone else's reply"
    assert unhandled.summary() == []
    _victims_are_served(world)


def test_after_all_that_the_gateway_is_healthy(world: World) -> None:
    with httpx.Client(base_url=world.gateway.url, timeout=60, trust_env=False) as http:
        health = http.get("/health")
    assert health.status_code == 200, health.text
    assert world.secrets.found_in(health.text) == []
    _victims_are_served(world)
