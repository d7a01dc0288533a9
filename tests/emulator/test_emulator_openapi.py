"""OpenAPI calls: who they run as, how bad tokens and missing scopes are refused, and data."""

from __future__ import annotations

import httpx

from larkgate.emulator import EmulatedUser, RunningEmulator
from larkgate.emulator.control_client import EmulatorControl

APP_ID = "cli_emulator"
APP_SECRET = "emulator-secret"


def _bearer(token: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tenant_token(http: httpx.Client) -> str:
    response = http.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": APP_ID, "app_secret": APP_SECRET},
    )
    body = response.json()
    assert response.status_code == 200
    assert body["code"] == 0
    assert 7100 < body["expire"] <= 7200  # a reused token reports the life it has left
    token = body["tenant_access_token"]
    assert isinstance(token, str) and token.startswith("t-")
    return token


def test_user_info_names_the_token_owner(
    control: EmulatorControl, http: httpx.Client, bob: EmulatedUser
) -> None:
    access = control.login("bob")["access_token"]

    response = http.get("/open-apis/authen/v1/user_info", headers=_bearer(access))

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["open_id"] == bob.open_id
    assert data["union_id"] == bob.union_id
    assert data["tenant_key"] == "tenant_demo"
    assert data["name"] == bob.name


def test_user_info_refuses_bad_and_tenant_tokens(http: httpx.Client) -> None:
    made_up = http.get("/open-apis/authen/v1/user_info", headers=_bearer("u-made-up"))
    tenant = http.get("/open-apis/authen/v1/user_info", headers=_bearer(_tenant_token(http)))
    assert made_up.status_code == 400
    assert made_up.json()["code"] == 99991668
    assert tenant.json()["code"] == 99991668


def test_tenant_token_is_reused_and_wrong_secret_refused(http: httpx.Client) -> None:
    assert _tenant_token(http) == _tenant_token(http)
    wrong = http.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": APP_ID, "app_secret": "guess"},
    )
    assert wrong.status_code == 400
    assert wrong.json()["code"] == 10014


def test_each_call_is_recorded_with_its_users_open_id(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser, bob: EmulatedUser
) -> None:
    alice_token = control.login("alice")["access_token"]
    bob_token = control.login("bob")["access_token"]
    control.reset_calls()

    alice_chats = http.get("/open-apis/im/v1/chats", headers=_bearer(alice_token)).json()
    http.get("/open-apis/im/v1/chats", headers=_bearer(bob_token))
    http.get("/open-apis/im/v1/chats", headers=_bearer(_tenant_token(http)))

    names = [item["name"] for item in alice_chats["data"]["items"]]
    assert "Alice's team chat" in names
    recorded = control.calls("/open-apis/im/")
    assert [(c["token_kind"], c["open_id"]) for c in recorded] == [
        ("user", alice.open_id),
        ("user", bob.open_id),
        ("tenant", None),
    ]
    assert recorded[0]["token_fingerprint"] != recorded[1]["token_fingerprint"]
    assert all(c["status"] == 200 and c["code"] == 0 for c in recorded)


def test_missing_and_unknown_tokens_are_refused(http: httpx.Client) -> None:
    none = http.get("/open-apis/im/v1/chats")
    unknown = http.get("/open-apis/im/v1/chats", headers=_bearer("u-made-up"))
    assert none.json()["code"] == 99991661
    assert unknown.status_code == 400
    assert unknown.json() == {
        "code": 99991668,
        "msg": "Invalid access token for authorization. "
        "Please make a request with token attached.",
    }


def test_required_scope_missing_answers_99991679(
    control: EmulatorControl, http: httpx.Client
) -> None:
    control.require_scope("/open-apis/im/v1/messages", "im:message")
    without = control.login("alice", scope="im:chat offline_access")["access_token"]
    with_scope = control.login("bob", scope="im:message offline_access")["access_token"]
    message = {"receive_id": "oc_all_hands", "msg_type": "text", "content": '{"text":"hi"}'}

    refused = http.post(
        "/open-apis/im/v1/messages",
        params={"receive_id_type": "chat_id"},
        json=message,
        headers=_bearer(without),
    )
    sent = http.post(
        "/open-apis/im/v1/messages",
        params={"receive_id_type": "chat_id"},
        json=message,
        headers=_bearer(with_scope),
    )

    assert refused.status_code == 400
    assert refused.json()["code"] == 99991679
    assert refused.json()["msg"].endswith("required one of these privileges: [im:message]")
    assert sent.json()["code"] == 0
    assert str(sent.json()["data"]["message_id"]).startswith("om_")
    # Paths outside the prefix still answer.
    chats = http.get("/open-apis/im/v1/chats", headers=_bearer(without))
    assert chats.json()["code"] == 0


def test_sent_message_is_remembered_with_its_sender(
    emulator: RunningEmulator, control: EmulatorControl, http: httpx.Client, alice: EmulatedUser
) -> None:
    access = control.login("alice")["access_token"]
    http.post(
        "/open-apis/im/v1/messages",
        params={"receive_id_type": "chat_id"},
        json={"receive_id": "oc_all_hands", "msg_type": "text", "content": '{"text":"hi"}'},
        headers=_bearer(access),
    )
    listed = http.get(
        "/open-apis/im/v1/messages",
        params={"container_id_type": "chat", "container_id": "oc_all_hands"},
        headers=_bearer(access),
    ).json()
    assert [m.sender_open_id for m in emulator.state.messages] == [alice.open_id]
    assert listed["data"]["items"][0]["sender"]["id"] == alice.open_id


def test_bitable_records_round_trip(control: EmulatorControl, http: httpx.Client) -> None:
    headers = _bearer(control.login("carol")["access_token"])
    app = http.post("/open-apis/bitable/v1/apps", json={"name": "Tasks"}, headers=headers)
    app_token = app.json()["data"]["app"]["app_token"]
    table = http.post(
        f"/open-apis/bitable/v1/apps/{app_token}/tables",
        json={"table": {"name": "Todo", "fields": [{"field_name": "Title", "type": 1}]}},
        headers=headers,
    ).json()["data"]["table_id"]
    records = f"/open-apis/bitable/v1/apps/{app_token}/tables/{table}/records"

    created = http.post(records, json={"fields": {"Title": "write tests"}}, headers=headers)
    record_id = created.json()["data"]["record"]["record_id"]
    http.put(f"{records}/{record_id}", json={"fields": {"Done": "yes"}}, headers=headers)
    found = http.post(
        f"{records}/search",
        json={
            "filter": {
                "conjunction": "and",
                "conditions": [
                    {"field_name": "Title", "operator": "is", "value": ["write tests"]}
                ],
            }
        },
        headers=headers,
    ).json()

    assert found["data"]["items"] == [
        {"record_id": record_id, "fields": {"Title": "write tests", "Done": "yes"}}
    ]
    fields = http.get(
        f"/open-apis/bitable/v1/apps/{app_token}/tables/{table}/fields", headers=headers
    ).json()
    assert [f["field_name"] for f in fields["data"]["items"]] == ["Title", "Done"]


def test_default_tool_paths_answer_for_the_caller(
    control: EmulatorControl, http: httpx.Client, alice: EmulatedUser
) -> None:
    headers = _bearer(control.login("alice")["access_token"])

    doc = http.get("/open-apis/docx/v1/documents/doxcn1/raw_content", headers=headers).json()
    node = http.get(
        "/open-apis/wiki/v2/spaces/get_node", params={"token": "wikcn123"}, headers=headers
    ).json()
    wiki = http.post("/open-apis/wiki/v1/nodes/search", json={"query": "plan"}, headers=headers)
    ids = http.post(
        "/open-apis/contact/v3/users/batch_get_id",
        json={"emails": [alice.email, "nobody@example.com"]},
        headers=headers,
    ).json()
    members = http.get("/open-apis/im/v1/chats/oc_all_hands/members", headers=headers).json()
    permission = http.post(
        "/open-apis/drive/v1/permissions/doxcn1/members",
        params={"type": "docx"},
        json={"member_type": "openid", "member_id": alice.open_id, "perm": "view"},
        headers=headers,
    ).json()
    other = http.get("/open-apis/calendar/v4/calendars/primary", headers=headers).json()

    assert "Alice" in doc["data"]["content"]
    assert node["data"]["node"]["node_token"] == "wikcn123"
    assert "Alice" in wiki.json()["data"]["items"][0]["title"]
    assert ids["data"]["user_list"] == [
        {"email": alice.email, "user_id": alice.open_id},
        {"email": "nobody@example.com"},
    ]
    assert members["data"]["member_total"] == 3
    assert permission["data"]["member"]["perm"] == "view"
    assert other == {"code": 0, "msg": "success", "data": {}}


def test_catch_all_still_demands_a_token(http: httpx.Client) -> None:
    response = http.post("/open-apis/task/v2/tasks", json={})
    assert response.json()["code"] == 99991661


def test_a_stored_document_is_served_whole_and_forgotten_on_reset(
    control: EmulatorControl, http: httpx.Client, emulator: RunningEmulator
) -> None:
    headers = _bearer(control.login("alice")["access_token"])
    text = "第一段 飞书 🚀\n" * 10_000
    emulator.state.put_document("doxcnStored", text)

    stored = http.get("/open-apis/docx/v1/documents/doxcnStored/raw_content", headers=headers)
    emulator.state.reset()

    assert stored.json()["data"]["content"] == text
    assert emulator.state.document("doxcnStored") is None
