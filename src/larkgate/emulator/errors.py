"""Feishu's error codes as the emulator answers them, and the exceptions that carry them."""

from __future__ import annotations

from enum import IntEnum


class OAuthCode(IntEnum):
    """Codes of the OAuth token endpoints (v2 and v3)."""

    INVALID_REQUEST = 20001
    INVALID_CLIENT = 20002
    CODE_NOT_FOUND = 20003
    CODE_EXPIRED = 20004
    UNSUPPORTED_GRANT_TYPE = 20024
    REFRESH_TOKEN_INVALID = 20026
    REFRESH_TOKEN_EXPIRED = 20037
    PKCE_FAILED = 20049
    SERVER_ERROR = 20050
    REFRESH_TOKEN_REVOKED = 20064
    REDIRECT_URI_MISMATCH = 20071
    SERVER_BUSY = 20072
    REFRESH_TOKEN_USED = 20073


class ApiCode(IntEnum):
    """Codes of the OpenAPI and app/tenant token endpoints."""

    BAD_REQUEST = 9499
    INVALID_APP_PARAM = 10003
    INVALID_APP_SECRET = 10014
    RECORD_NOT_FOUND = 1254043
    RATE_LIMITED = 99991400
    MISSING_TOKEN = 99991661
    INVALID_TENANT_TOKEN = 99991663
    INVALID_USER_TOKEN = 99991668
    USER_TOKEN_EXPIRED = 99991677
    MISSING_SCOPE = 99991679
    FIELD_VALIDATION = 99992402


# The RFC 6749 "error" word Feishu puts next to each code.
_OAUTH_ERROR_WORD: dict[int, str] = {
    OAuthCode.INVALID_REQUEST: "invalid_request",
    OAuthCode.INVALID_CLIENT: "invalid_client",
    OAuthCode.UNSUPPORTED_GRANT_TYPE: "unsupported_grant_type",
    OAuthCode.SERVER_ERROR: "server_error",
    OAuthCode.SERVER_BUSY: "temporarily_unavailable",
    ApiCode.RATE_LIMITED: "too_many_requests",
}

# Server-side trouble answers 5xx, everything the caller can fix answers 400.
_OAUTH_STATUS: dict[int, int] = {
    OAuthCode.SERVER_ERROR: 500,
    OAuthCode.SERVER_BUSY: 503,
    ApiCode.RATE_LIMITED: 429,
}


def oauth_error_word(code: int) -> str:
    return _OAUTH_ERROR_WORD.get(code, "invalid_grant")


def oauth_status(code: int) -> int:
    return _OAUTH_STATUS.get(code, 400)


class OAuthError(Exception):
    """A refusal from the OAuth token endpoint, answered as flat JSON."""

    def __init__(self, code: OAuthCode, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description

    @property
    def status(self) -> int:
        return oauth_status(self.code)

    def body(self) -> dict[str, object]:
        return {
            "code": int(self.code),
            "error": oauth_error_word(self.code),
            "error_description": self.description,
        }


# Feishu's own wording for the codes the emulator answers without a more specific message.
_API_MESSAGES: dict[int, str] = {
    ApiCode.INVALID_USER_TOKEN: (
        "Invalid access token for authorization. Please make a request with token attached."
    ),
    ApiCode.USER_TOKEN_EXPIRED: (
        "token expired. The user access token has expired, please refresh it or log in again."
    ),
    ApiCode.MISSING_TOKEN: (
        "Missing access token for authorization. Please make a request with token attached."
    ),
    ApiCode.INVALID_TENANT_TOKEN: "Invalid access token for authorization.",
    ApiCode.RATE_LIMITED: "request trigger frequency limit",
}


def api_message(code: ApiCode) -> str:
    return _API_MESSAGES.get(code, "request refused")


class ApiError(Exception):
    """A refusal from an OpenAPI endpoint, answered as `{"code", "msg"}`."""

    def __init__(self, code: ApiCode, msg: str | None = None, status: int = 400) -> None:
        self.code = code
        self.msg = msg if msg is not None else api_message(code)
        self.status = status
        super().__init__(self.msg)

    def body(self) -> dict[str, object]:
        return {"code": int(self.code), "msg": self.msg}


def missing_scope_msg(scope: str) -> str:
    return (
        "Unauthorized. You do not have permission to perform the requested operation on the "
        "resource. Please request user re-authorization and try again. "
        f"required one of these privileges: [{scope}]"
    )
