"""The one place where a client's JSON-RPC message meets a lark-mcp child.

Both transports hand every POSTed body here and send back what comes out. The router answers
``initialize`` and ``ping`` itself, sends people without a login their login link instead of a
tool result, and otherwise relays the message to the user's own child with the user's current
access token as the Bearer header.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import __version__, errors, logs
from ..config import Settings
from ..feishu.keeper import NeedsLogin, TokenKeeper, TryAgain
from ..feishu.oauth import parse_scopes
from ..instances.channel import ChannelClosed
from ..instances.pool import InstanceFailed, InstancePool
from ..instances.spawner import Child, StartFailed
from ..loginlinks import LoginLinks
from ..store import Store
from ..userkey import user_key
from .sessions import note_client

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
TOKEN_REJECTED = ("99991668", "99991677")
SCOPE_MISSING = "99991679"
# Feishu names the missing scopes in brackets after "privileges" (or "scopes ... required").
_PRIVILEGES = re.compile(r"(?:privilege|scope)s?\b[^\[\]\n]{0,60}\[([^\]]*)\]", re.IGNORECASE)


class Unavailable(Exception):
    """The child could not be reached or answered garbage; the caller gets a clear error.

    ``delivered`` is False when the request surely never reached the child."""

    def __init__(self, message: str, *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


@dataclass(frozen=True)
class Caller:
    """Who sent a message: the MCP session, and the user it is bound to (if any)."""

    session_id: str
    user_id: str | None


class Router:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pool: InstancePool,
        keeper: TokenKeeper,
    ) -> None:
        self._settings = settings
        self._store = store
        self._pool = pool
        self._keeper = keeper
        self._links = LoginLinks(settings)
        self.metrics: Metrics | None = None  # set by the operations layer

    def login_link(self, session_id: str, scopes: Sequence[str] = ()) -> str:
        """The session's login link; it names the session without carrying its id."""
        handle = self._links.handle(session_id)
        try:
            self._store.note_login_handle(session_id, handle)
        except sqlite3.Error as exc:
            # The answer still goes out; the same link is recorded when it is shown again.
            log.warning("could not record a login link, it opens once shown again: %s", exc)
        return self._links.url(handle, scopes)

    async def handle(self, caller: Caller, message: Any) -> Any:
        """The reply to one JSON-RPC message or batch; None when nothing is owed."""
        logs.bind_user_id(caller.user_id)
        if isinstance(message, list):
            if not message:
                return errors.rpc_error(
                    None, errors.INVALID_REQUEST, "empty batch", errors.BAD_JSON
                )
            replies = [await self._observed(caller, m) for m in message]
            kept = [r for r in replies if r is not None]
            return kept or None
        return await self._observed(caller, message)

    async def _observed(self, caller: Caller, message: Any) -> dict[str, Any] | None:
        reply = await self._one(caller, message)
        if self.metrics is not None:
            self.metrics.mcp_message(message, reply)
        return reply

    async def _one(self, caller: Caller, message: Any) -> dict[str, Any] | None:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return errors.rpc_error(
                None, errors.INVALID_REQUEST, "not a JSON-RPC 2.0 message", errors.BAD_JSON
            )
        method = message.get("method")
        request_id = message.get("id")
        if not isinstance(method, str):
            return None  # a client's answer to a server request; lark-mcp sends none
        if "id" not in message:
            return None  # notifications need no reply and lark-mcp keeps no session state
        if method == "initialize":
            return self._initialize(caller, message)
        if method == "ping":
            return {"jsonrpc": "2.0", "id": request_id, "result": {}}
        logged_in = self._logged_in(caller)  # one store read per message on the hot path
        if method == "tools/call" and not logged_in:
            return self._login_result(caller, request_id, self._why_login(caller))
        try:
            if caller.user_id is None or not logged_in:
                return await self._relay_anonymous(message)
            return await self._relay_user(caller, caller.user_id, message)
        except NeedsLogin as exc:
            return self._login_result(caller, request_id, str(exc))
        except TryAgain as exc:
            return errors.rpc_error(
                request_id, errors.SERVER_ERROR, str(exc), errors.FEISHU_TRY_AGAIN
            )
        except InstanceFailed as exc:
            return errors.rpc_error(
                request_id, errors.SERVER_ERROR, str(exc), errors.INSTANCE_FAILED
            )
        except (StartFailed, Unavailable) as exc:
            return errors.rpc_error(
                request_id,
                errors.SERVER_ERROR,
                f"your lark-mcp process is not available ({exc}); please retry",
                errors.INSTANCE_UNAVAILABLE,
            )

    def _logged_in(self, caller: Caller) -> bool:
        """Holds tokens that Feishu has not refused; discovery for the others goes anonymous."""
        if caller.user_id is None:
            return False
        user = self._store.get_user(caller.user_id)
        return user is not None and user.has_tokens and user.needs_login is None

    def _why_login(self, caller: Caller) -> str:
        user = self._store.get_user(caller.user_id) if caller.user_id else None
        if user is not None and user.needs_login:
            return user.needs_login
        return "this MCP session is not logged in to Feishu yet (each new session logs in once)"

    def _initialize(self, caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
        params = message.get("params") or {}
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        version = asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
        if isinstance(params, dict):
            note_client(self._store, caller.session_id, params.get("clientInfo"))
        if self._logged_in(caller):
            instructions = "Feishu/Lark tools acting as you, through LarkGate."
        else:
            link = self.login_link(caller.session_id)
            instructions = (
                "Feishu/Lark tools through LarkGate. Before a tool can act as you, log in "
                f"to Feishu once by opening this link in a browser: {link}"
            )
        return {
            "jsonrpc": "2.0",
            "id": message.get("id"),
            "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "LarkGate", "version": __version__},
                "instructions": instructions,
            },
        }

    def _login_result(
        self, caller: Caller, request_id: Any, why: str, scopes: Sequence[str] = ()
    ) -> dict[str, Any]:
        link = self.login_link(caller.session_id, scopes)
        text = (
            f"Login required ({errors.LOGIN_REQUIRED}): {why}. Open this link in a browser to log "
            f"in to Feishu, then call the tool again: {link}"
        )
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "result": {"content": [{"type": "text", "text": text}], "isError": True},
        }

    async def _relay_anonymous(self, message: dict[str, Any]) -> dict[str, Any]:
        child = await self._pool.default_child()
        logs.bind(instance=child.child_id)
        return await self.send_to_child(child, message, token=None)

    async def _relay_user(
        self, caller: Caller, user_id: str, message: dict[str, Any]
    ) -> dict[str, Any]:
        token = await self._keeper.access_token(user_id)
        reply = await self._ask_users_child(user_id, message, token)
        if message.get("method") == "tools/call":
            verdict = _feishu_verdict(reply)
            if verdict == "rejected":
                log.info("token of user %s rejected by Feishu; refreshing once", user_key(user_id))
                token = await self._keeper.refresh_rejected(user_id, token)
                reply = await self._ask_users_child(user_id, message, token)
                verdict = _feishu_verdict(reply)
                if verdict == "rejected":
                    why = "Feishu no longer accepts your login, even freshly renewed"
                    self._store.mark_needs_login(user_id, why)
                    raise NeedsLogin(why)
            if verdict is not None and verdict.startswith("scope:"):
                missing = verdict.removeprefix("scope:")
                return self._login_result(
                    caller,
                    message.get("id"),
                    f"this tool needs Feishu permissions you have not granted ({missing})",
                    _scope_names(missing),
                )
        return reply

    async def _ask_users_child(
        self, user_id: str, message: dict[str, Any], token: str
    ) -> dict[str, Any]:
        """Send to the user's child; a child found dead before the request reached it is
        replaced and the request sent once more (it cannot have had an effect yet)."""
        for attempt in (1, 2):
            async with self._pool.use(user_id) as child:
                logs.bind(instance=child.child_id)
                try:
                    return await self.send_to_child(child, message, token)
                except Unavailable as exc:
                    if exc.delivered or attempt == 2:
                        raise
                    log.info("child of user %s unreachable; trying once more", user_key(user_id))
                    await self._pool.discard_if_dead(user_id, child)
        raise AssertionError("unreachable")

    async def send_to_child(
        self, child: Child, message: dict[str, Any], token: str | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await self._pool.spawner.call(
                child, message, token, self._settings.child_timeout
            )
        except ChannelClosed as exc:
            raise Unavailable(str(exc), delivered=exc.delivered) from None
        except TimeoutError:
            raise Unavailable(f"no answer within {self._settings.child_timeout:g}s") from None
        except ValueError:
            raise Unavailable("unreadable answer") from None
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.child_hop(message.get("method", ""), elapsed)
            log.debug("child hop for %s took %.1f ms", message.get("method"), elapsed * 1000)


def _scope_names(text: str) -> list[str]:
    """The scope names Feishu listed, for the login link; none if they do not parse."""
    try:
        return parse_scopes(text)
    except ValueError:
        return []


def _feishu_verdict(reply: dict[str, Any]) -> str | None:
    """'rejected' for an invalid/expired user token, 'scope:<names>' for a missing scope."""
    result = reply.get("result")
    if not isinstance(result, dict) or not result.get("isError"):
        return None
    texts = [
        c.get("text", "")
        for c in result.get("content") or []
        if isinstance(c, dict) and isinstance(c.get("text"), str)
    ]
    joined = "\n".join(texts)
    if any(code in joined for code in TOKEN_REJECTED):
        return "rejected"
    if SCOPE_MISSING in joined:
        found = _PRIVILEGES.search(joined)
        return "scope:" + (found.group(1).strip() if found else "unknown")
    return None
