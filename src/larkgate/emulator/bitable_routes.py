"""The Bitable OpenAPI paths of lark-mcp's default tools, served from BitableStore."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from . import payload
from .errors import ApiCode, ApiError
from .guard import Answer, CallContext, guarded, read_json_object, require_caller
from .state import EmulatorState

_APPS = "/open-apis/bitable/v1/apps"
_TABLE = _APPS + "/{app_token}/tables/{table_id}"


def _ok(data: dict[str, object]) -> Answer:
    return Answer({"code": 0, "msg": "success", "data": data})


def _page(items: list[dict[str, object]]) -> Answer:
    return _ok({"items": items, "has_more": False, "page_token": "", "total": len(items)})


async def _open(request: Request, ctx: CallContext) -> tuple[EmulatorState, dict[str, object]]:
    require_caller(request, ctx)
    body = await read_json_object(request) if request.method in ("POST", "PUT") else {}
    return ctx.state, body


async def create_app(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    return _ok({"app": state.bitable.create_app(payload.text(body, "name", "Untitled base"))})


async def tables(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    app_token = request.path_params["app_token"]
    if request.method == "GET":
        return _page(state.bitable.tables(app_token))
    table = payload.mapping(body, "table")
    names = [str(f.get("field_name", "")) for f in payload.object_list(table, "fields")]
    created = state.bitable.create_table(
        app_token, payload.text(table, "name", "Table"), [n for n in names if n]
    )
    return _ok(created)


async def fields(request: Request, ctx: CallContext) -> Answer:
    state, _ = await _open(request, ctx)
    params = request.path_params
    return _page(state.bitable.fields(params["app_token"], params["table_id"]))


async def records(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    app_token, table_id = request.path_params["app_token"], request.path_params["table_id"]
    if request.method == "GET":
        return _page(state.bitable.records(app_token, table_id))
    record = state.bitable.add_record(app_token, table_id, payload.mapping(body, "fields"))
    return _ok({"record": record})


async def batch_create(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    app_token, table_id = request.path_params["app_token"], request.path_params["table_id"]
    created = [
        state.bitable.add_record(app_token, table_id, payload.mapping(item, "fields"))
        for item in payload.object_list(body, "records")
    ]
    return _ok({"records": created})


async def update_record(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    params = request.path_params
    record = _update(state, params["app_token"], params["table_id"], params["record_id"], body)
    return _ok({"record": record})


async def batch_update(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    app_token, table_id = request.path_params["app_token"], request.path_params["table_id"]
    updated = [
        _update(state, app_token, table_id, payload.text(item, "record_id"), item)
        for item in payload.object_list(body, "records")
    ]
    return _ok({"records": updated})


def _update(
    state: EmulatorState, app_token: str, table_id: str, record_id: str, body: dict[str, object]
) -> dict[str, object]:
    record = state.bitable.update_record(
        app_token, table_id, record_id, payload.mapping(body, "fields")
    )
    if record is None:
        raise ApiError(ApiCode.RECORD_NOT_FOUND, "RecordIdNotFound")
    return record


async def search(request: Request, ctx: CallContext) -> Answer:
    state, body = await _open(request, ctx)
    app_token, table_id = request.path_params["app_token"], request.path_params["table_id"]
    found = state.bitable.records(app_token, table_id)
    conditions = body.get("filter", {})
    if isinstance(conditions, dict):
        for condition in payload.object_list(conditions, "conditions"):
            found = [r for r in found if _matches(r, condition)]
    return _page(found)


def _matches(record: dict[str, object], condition: dict[str, object]) -> bool:
    """Only the `is` and `contains` operators filter; the rest let every record through."""
    values = record.get("fields")
    value = values.get(str(condition.get("field_name"))) if isinstance(values, dict) else None
    wanted = condition.get("value")
    target = str(wanted[0]) if isinstance(wanted, list) and wanted else ""
    operator = condition.get("operator")
    if operator == "is":
        return str(value) == target
    if operator == "contains":
        return value is not None and target in str(value)
    return True


routes = [
    Route(_APPS, guarded("openapi", create_app), methods=["POST"]),
    Route(_APPS + "/{app_token}/tables", guarded("openapi", tables), methods=["GET", "POST"]),
    Route(_TABLE + "/fields", guarded("openapi", fields), methods=["GET"]),
    Route(_TABLE + "/records/search", guarded("openapi", search), methods=["POST"]),
    Route(_TABLE + "/records/batch_create", guarded("openapi", batch_create), methods=["POST"]),
    Route(_TABLE + "/records/batch_update", guarded("openapi", batch_update), methods=["POST"]),
    Route(_TABLE + "/records", guarded("openapi", records), methods=["GET", "POST"]),
    Route(_TABLE + "/records/{record_id}", guarded("openapi", update_record), methods=["PUT"]),
]
