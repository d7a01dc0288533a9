"""A small in-memory Bitable (Base): apps, tables, fields and records that remember writes."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

Record = dict[str, object]


@dataclass
class _Table:
    table_id: str
    name: str
    fields: list[dict[str, object]]
    records: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass
class _App:
    app_token: str
    name: str
    tables: dict[str, _Table] = field(default_factory=dict)


def _new_field(name: str, primary: bool = False) -> dict[str, object]:
    # Type 1 is Feishu's plain text field.
    return {
        "field_id": "fld" + secrets.token_hex(5),
        "field_name": name,
        "type": 1,
        "is_primary": primary,
    }


class BitableStore:
    """Apps and tables spring into being when first named, so any tool call finds data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: dict[str, _App] = {}

    def reset(self) -> None:
        with self._lock:
            self._apps.clear()

    def create_app(self, name: str) -> dict[str, object]:
        with self._lock:
            app = self._app("bascn" + secrets.token_hex(8), name)
            table = self._table(app, None, "Table 1", [])
            return {
                "app_token": app.app_token,
                "name": app.name,
                "default_table_id": table.table_id,
                "url": f"https://emulator.invalid/base/{app.app_token}",
            }

    def create_table(self, app_token: str, name: str, field_names: list[str]) -> dict[str, object]:
        with self._lock:
            table = self._table(self._app(app_token), None, name, field_names)
            return {
                "table_id": table.table_id,
                "default_view_id": "vew" + table.table_id[3:],
                "field_id_list": [f["field_id"] for f in table.fields],
            }

    def tables(self, app_token: str) -> list[dict[str, object]]:
        with self._lock:
            app = self._app(app_token)
            if not app.tables:
                self._table(app, None, "Table 1", [])
            return [
                {"table_id": t.table_id, "name": t.name, "revision": 1}
                for t in app.tables.values()
            ]

    def fields(self, app_token: str, table_id: str) -> list[dict[str, object]]:
        with self._lock:
            return [dict(f) for f in self._table(self._app(app_token), table_id).fields]

    def add_record(self, app_token: str, table_id: str, values: dict[str, object]) -> Record:
        with self._lock:
            table = self._table(self._app(app_token), table_id)
            record_id = "rec" + secrets.token_hex(5)
            table.records[record_id] = {}
            return self._write(table, record_id, values)

    def update_record(
        self, app_token: str, table_id: str, record_id: str, values: dict[str, object]
    ) -> Record | None:
        with self._lock:
            table = self._table(self._app(app_token), table_id)
            if record_id not in table.records:
                return None
            return self._write(table, record_id, values)

    def records(self, app_token: str, table_id: str) -> list[Record]:
        with self._lock:
            table = self._table(self._app(app_token), table_id)
            return [{"record_id": rid, "fields": dict(v)} for rid, v in table.records.items()]

    def _write(self, table: _Table, record_id: str, values: dict[str, object]) -> Record:
        known = {f["field_name"] for f in table.fields}
        table.fields.extend(_new_field(name) for name in values if name not in known)
        table.records[record_id].update(values)
        return {"record_id": record_id, "fields": dict(table.records[record_id])}

    def _app(self, app_token: str, name: str = "Untitled base") -> _App:
        app = self._apps.get(app_token)
        if app is None:
            app = self._apps[app_token] = _App(app_token, name)
        return app

    def _table(
        self,
        app: _App,
        table_id: str | None,
        name: str = "Table",
        field_names: list[str] | None = None,
    ) -> _Table:
        if table_id is not None and table_id in app.tables:
            return app.tables[table_id]
        names = field_names or ["Text"]
        table = _Table(
            table_id=table_id or "tbl" + secrets.token_hex(6),
            name=name,
            fields=[_new_field(n, primary=i == 0) for i, n in enumerate(names)],
        )
        app.tables[table.table_id] = table
        return table
