"""The OpenAPI paths lark-mcp's default tools call, answering with per-caller fake data.

Every answer names the caller (a user's name, or "the app") so a test can see whose
data came back, and every path demands a live token before it answers.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.routing import Route

from . import payload
from .config import DEFAULT_TENANT_KEY, EmulatedUser
from .guard import Answer, CallContext, guarded, read_json_object, require_caller
from .state import SentMessage

_ALL_HANDS = "oc_all_hands"


def _ok(data: dict[str, object]) -> Answer:
    return Answer({"code": 0, "msg": "success", "data": data})


def _page(items: list[dict[str, object]], **extra: object) -> Answer:
    return _ok({"items": items, "page_token": "", "has_more": False, **extra})


def _caller(ctx: CallContext) -> EmulatedUser | None:
    return ctx.state.config.find_user(ctx.open_id) if ctx.open_id else None


def _caller_name(ctx: CallContext) -> str:
    user = _caller(ctx)
    return user.name if user else "the app"


def _tenant_key(ctx: CallContext) -> str:
    user = _caller(ctx)
    users = ctx.state.config.users
    return user.tenant_key if user else (users[0].tenant_key if users else DEFAULT_TENANT_KEY)


def _chat(chat_id: str, name: str, owner: str, tenant_key: str) -> dict[str, object]:
    return {
        "chat_id": chat_id,
        "name": name,
        "description": f"{name} (emulated)",
        "avatar": "",
        "owner_id": owner,
        "owner_id_type": "open_id",
        "external": False,
        "tenant_key": tenant_key,
        "chat_status": "normal",
    }


def _chats_for(ctx: CallContext) -> list[dict[str, object]]:
    config = ctx.state.config
    first = config.users[0] if config.users else None
    tenant_key = _tenant_key(ctx)
    everyone = _chat(_ALL_HANDS, "All hands", first.open_id if first else "", tenant_key)
    user = _caller(ctx)
    if user is None:
        return [_chat("oc_app_notifications", "App notifications", "", tenant_key), everyone]
    own = _chat(f"oc_{user.user_id}_team", f"{user.name}'s team chat", user.open_id, tenant_key)
    return [own, everyone]


async def list_chats(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    return _page(_chats_for(ctx))


async def search_chats(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    query = request.query_params.get("query", "").lower()
    return _page([c for c in _chats_for(ctx) if query in str(c["name"]).lower()])


async def create_chat(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    name = payload.text(body, "name", f"{_caller_name(ctx)}'s new chat")
    chat_id = "oc_" + secrets.token_hex(16)
    return _ok(_chat(chat_id, name, ctx.open_id or "", _tenant_key(ctx)))


async def chat_members(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    members: list[dict[str, object]] = [
        {
            "member_id_type": "open_id",
            "member_id": user.open_id,
            "name": user.name,
            "tenant_key": user.tenant_key,
        }
        for user in ctx.state.config.users
    ]
    return _page(members, member_total=len(members))


async def send_message(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    receive_id_type = payload.text(dict(request.query_params), "receive_id_type")
    message = SentMessage(
        message_id="om_" + secrets.token_hex(16),
        sender_open_id=ctx.open_id,
        receive_id_type=receive_id_type,
        receive_id=payload.text(body, "receive_id"),
        msg_type=payload.text(body, "msg_type"),
        content=payload.text(body, "content"),
        sent_at=ctx.state.clock.now(),
    )
    ctx.state.record_message(message)
    return _ok(_message_json(ctx, message))


async def list_messages(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    container = request.query_params.get("container_id", "")
    items = [_message_json(ctx, m) for m in ctx.state.messages if m.receive_id == container]
    return _page(items)


def _message_json(ctx: CallContext, message: SentMessage) -> dict[str, object]:
    sent_ms = str(int(message.sent_at * 1000))
    if message.sender_open_id is not None:
        sender = {"id": message.sender_open_id, "id_type": "open_id", "sender_type": "user"}
    else:
        sender = {"id": ctx.state.config.app_id, "id_type": "app_id", "sender_type": "app"}
    in_chat = message.receive_id_type == "chat_id"
    return {
        "message_id": message.message_id,
        "root_id": "",
        "parent_id": "",
        "msg_type": message.msg_type,
        "create_time": sent_ms,
        "update_time": sent_ms,
        "deleted": False,
        "updated": False,
        "chat_id": message.receive_id if in_chat else "oc_p2p_" + message.receive_id,
        "sender": {**sender, "tenant_key": _tenant_key(ctx)},
        "body": {"content": message.content},
    }


async def batch_get_id(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    id_type = request.query_params.get("user_id_type", "open_id")
    by_email = {u.email: u for u in ctx.state.config.users}
    user_list: list[dict[str, object]] = []
    for email in payload.text_list(body, "emails"):
        user = by_email.get(email)
        entry: dict[str, object] = {"email": email}
        if user is not None:
            ids = {"open_id": user.open_id, "union_id": user.union_id, "user_id": user.user_id}
            entry["user_id"] = ids.get(id_type, user.open_id)
        user_list.append(entry)
    user_list.extend({"mobile": m} for m in payload.text_list(body, "mobiles"))
    return _ok({"user_list": user_list})


async def raw_content(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    document_id = request.path_params["document_id"]
    stored = ctx.state.document(document_id)
    if stored is not None:
        return _ok({"content": stored})
    return _ok({"content": f"Document {document_id}\nOpened by {_caller_name(ctx)}.\n"})


async def search_wiki(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    query = payload.text(body, "query")
    node = {
        "node_id": "wikcn" + secrets.token_hex(8),
        "space_id": "7000000000000000001",
        "obj_token": "doxcn" + secrets.token_hex(8),
        "obj_type": 8,
        "title": f"{query}: {_caller_name(ctx)}'s notes",
        "url": "https://emulator.invalid/wiki/node",
    }
    return _page([node])


async def get_wiki_node(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    token = payload.text(dict(request.query_params), "token")
    node = {
        "space_id": "7000000000000000001",
        "node_token": token,
        "obj_token": "doxcn" + token[-8:],
        "obj_type": request.query_params.get("obj_type", "docx"),
        "parent_node_token": "",
        "node_type": "origin",
        "title": f"Wiki node seen by {_caller_name(ctx)}",
        "owner": ctx.open_id or "",
        "creator": ctx.open_id or "",
        "has_child": False,
    }
    return _ok({"node": node})


async def add_permission_member(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    member = {
        "member_type": payload.text(body, "member_type"),
        "member_id": payload.text(body, "member_id"),
        "perm": payload.text(body, "perm"),
    }
    return _ok({"member": member})


async def search_docs(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    body = await read_json_object(request)
    search_key = body.get("search_key")
    key = search_key if isinstance(search_key, str) and search_key else "document"
    entity = {
        "docs_token": "doxcn" + secrets.token_hex(8),
        "docs_type": "docx",
        "title": f"{key} ({_caller_name(ctx)})",
        "owner_id": ctx.open_id or "",
    }
    return _ok({"docs_entities": [entity], "has_more": False, "total": 1})


async def anything_else(request: Request, ctx: CallContext) -> Answer:
    require_caller(request, ctx)
    return _ok({})


_IM = "/open-apis/im/v1"
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]

routes = [
    Route(_IM + "/chats", guarded("openapi", list_chats), methods=["GET"]),
    Route(_IM + "/chats", guarded("openapi", create_chat), methods=["POST"]),
    Route(_IM + "/chats/search", guarded("openapi", search_chats), methods=["GET"]),
    Route(_IM + "/chats/{chat_id}/members", guarded("openapi", chat_members), methods=["GET"]),
    Route(_IM + "/messages", guarded("openapi", send_message), methods=["POST"]),
    Route(_IM + "/messages", guarded("openapi", list_messages), methods=["GET"]),
    Route(
        "/open-apis/contact/v3/users/batch_get_id",
        guarded("openapi", batch_get_id),
        methods=["POST"],
    ),
    Route(
        "/open-apis/docx/v1/documents/{document_id}/raw_content",
        guarded("openapi", raw_content),
        methods=["GET"],
    ),
    Route("/open-apis/wiki/v1/nodes/search", guarded("openapi", search_wiki), methods=["POST"]),
    Route(
        "/open-apis/wiki/v2/spaces/get_node", guarded("openapi", get_wiki_node), methods=["GET"]
    ),
    Route(
        "/open-apis/drive/v1/permissions/{token}/members",
        guarded("openapi", add_permission_member),
        methods=["POST"],
    ),
    Route(
        "/open-apis/suite/docs-api/search/object",
        guarded("openapi", search_docs),
        methods=["POST"],
    ),
]

# Last, after the Bitable routes too: whatever else lark-mcp may call still answers.
fallback_routes = [
    Route("/open-apis/{rest:path}", guarded("openapi", anything_else), methods=_ANY_METHOD),
]
