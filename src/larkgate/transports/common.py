"""Checks shared by both transports: Origin, body size and JSON parsing."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .. import errors
from ..config import Settings


class Rejected(Exception):
    """A request refused before it reached the router, with its HTTP answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; echoing them back would make invalid JSON."""
    raise ValueError(f"{name} is not JSON")


def reply_bytes(reply: Any) -> bytes:
    """A reply as compact UTF-8 JSON. Escaping every non-ASCII character as \\uXXXX would
    double Chinese text and triple emoji, and some SSE clients refuse events over 1 MiB; a
    lone surrogate (valid in JSON, not in UTF-8) falls back to the escaped form."""
    try:
        return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(reply, separators=(",", ":")).encode()


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def http_error(status: int, code: str, message: str, **headers: str) -> Response:
    body = errors.rpc_error(None, errors.INVALID_REQUEST, message, code)
    return JSONResponse(body, status_code=status, headers=headers or None)


def check_origin(request: Request, settings: Settings) -> None:
    """Refuse browsers on other sites (DNS rebinding); clients without Origin pass."""
    origin = request.headers.get("origin")
    if origin is None or origin in settings.allowed_origins:
        return
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = ""
    if origin == settings.public_url or host in ("localhost", "127.0.0.1", "::1"):
        return
    raise Rejected(http_error(403, errors.BAD_ORIGIN, f"Origin {origin[:100]!r} is not allowed"))


async def read_json_body(request: Request, settings: Settings) -> Any:
    """The parsed body; 413 past the size limit, 400 for anything that is not JSON."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(http_error(413, errors.BODY_TOO_LARGE, f"body over {limit} bytes"))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejected(
                        http_error(413, errors.BODY_TOO_LARGE, f"body over {limit} bytes")
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise Rejected(
            http_error(
                408, errors.BODY_TIMEOUT, f"body not received within {settings.body_timeout:g}s"
            )
        ) from None
    except ClientDisconnect:
        # Nobody is left to answer; this only ends the request quietly.
        raise Rejected(Response(status_code=400)) from None
    try:
        return json.loads(b"".join(chunks), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected(
            JSONResponse(
                errors.rpc_error(
                    None, errors.PARSE_ERROR, "body is not valid JSON", errors.BAD_JSON
                ),
                status_code=400,
            )
        ) from None
