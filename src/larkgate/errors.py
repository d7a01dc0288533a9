"""Errors a client can cause or meet, each with a stable code.

JSON-RPC errors use the server range (-32000..-32099) with the stable string code in
``error.data.code``; HTTP error pages and JSON bodies carry the same string.
"""

from __future__ import annotations

import json
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
SERVER_ERROR = -32000

# stable string codes
BAD_JSON = "bad_json"
BODY_TOO_LARGE = "body_too_large"
BODY_TIMEOUT = "body_timeout"
CHILD_REFUSED = "request_refused"
BAD_ACCEPT = "bad_accept"
BAD_CONTENT_TYPE = "bad_content_type"
BAD_ORIGIN = "bad_origin"
BAD_PROTOCOL_VERSION = "bad_protocol_version"
SESSION_REQUIRED = "session_required"
ALREADY_INITIALIZED = "already_initialized"
UNKNOWN_SESSION = "unknown_session"
INSTANCE_BUSY = "instance_busy"
STORE_UNAVAILABLE = "store_unavailable"
INSTANCE_FAILED = "instance_failed"
INSTANCE_UNAVAILABLE = "instance_unavailable"
FEISHU_TRY_AGAIN = "feishu_try_again"
LOGIN_REQUIRED = "login_required"
LOGIN_STATE_INVALID = "login_state_invalid"
LOGIN_CANCELLED = "login_cancelled"
LOGIN_FAILED = "login_failed"
LOGIN_SCOPE_INVALID = "login_scope_invalid"
SESSION_OTHER_USER = "session_other_user"
REDIRECT_URI_MISMATCH = "redirect_uri_mismatch"

# LarkGate's own credentials (OAuth access tokens, personal access keys) and the pages around them
CREDENTIAL_REQUIRED = "credential_required"
INVALID_CREDENTIAL = "invalid_credential"
RATE_LIMITED = "rate_limited"
AUTHORIZATION_INVALID = "authorization_invalid"
AUTHORIZATION_EXPIRED = "authorization_expired"
OTHER_BROWSER = "other_browser"
FORM_EXPIRED = "form_expired"


def rpc_error(
    request_id: Any, rpc_code: int, message: str, code: str, **extra: Any
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": rpc_code, "message": message, "data": {"code": code, **extra}},
    }


def rpc_error_bytes(
    request_id: Any, rpc_code: int, message: str, code: str, **extra: Any
) -> bytes:
    return json.dumps(rpc_error(request_id, rpc_code, message, code, **extra)).encode()
