"""Typed access to fields of a JSON request body, refusing like Feishu's field validation."""

from __future__ import annotations

from .errors import ApiCode, ApiError


def _invalid(name: str, expected: str) -> ApiError:
    return ApiError(
        ApiCode.FIELD_VALIDATION, f"field validation failed: {name} must be {expected}"
    )


def text(body: dict[str, object], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise _invalid(name, "a non-empty string")
    return value


def mapping(body: dict[str, object], name: str) -> dict[str, object]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise _invalid(name, "an object")
    return value


def text_list(body: dict[str, object], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(name, "a list of strings")
    return value


def object_list(body: dict[str, object], name: str) -> list[dict[str, object]]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _invalid(name, "a list of objects")
    return value
