"""A gateway's token machinery without lark-mcp: the real parts `build_gateway` wires, the real
login routes served in-process, and the Feishu emulator over real HTTP on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from larkgate.app import Gateway, build_gateway
from larkgate.clock import Clock
from larkgate.emulator import CallRecord, RunningEmulator
from larkgate.emulator.grants import fingerprint
from larkgate.store import Tokens
from support import confirmation_form, gateway_settings

TOKEN_PATHS = ("/open-apis/authen/v2/oauth/token", "/oauth/v3/token")
FAST_RETRIES = {"refresh_backoff": 0.01, "refresh_backoff_cap": 0.05, "feishu_timeout": 5.0}


@dataclass
class Bench:
    emulator: RunningEmulator
    gateway: Gateway
    web: httpx.AsyncClient  # the gateway's login routes, in-process

    @classmethod
    def build(
        cls,
        data_dir: Path,
        emulator: RunningEmulator,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> Bench:
        """``clock``: pass the previous run's to restart on the same data directory."""
        settings = gateway_settings(data_dir, emulator, **(FAST_RETRIES | overrides))
        gateway = build_gateway(settings, clock or Clock())
        login = Starlette(
            routes=[
                Route("/oauth/start", gateway.login.start, methods=["GET"]),
                Route("/oauth/start", gateway.login.confirm, methods=["POST"]),
                Route("/oauth/callback", gateway.login.callback),
            ]
        )
        web = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=login), base_url=settings.public_url
        )
        return cls(emulator, gateway, web)

    async def close(self) -> None:
        await self.web.aclose()
        await self.gateway.http.aclose()
        self.gateway.store.close()

    @property
    def keeper(self) -> Any:
        return self.gateway.keeper

    @property
    def store(self) -> Any:
        return self.gateway.store

    # -- logging in, as a browser would -----------------------------------------------------

    def new_session(self, session_id: str) -> str:
        self.gateway.sessions.create("streamable", session_id)
        return session_id

    async def open_login_link(self, session_id: str, scope: str | None = None) -> httpx.Response:
        """The login link's page (or its refusal)."""
        link = httpx.URL(self.gateway.router.login_link(session_id))
        params = dict(link.params) | ({"scope": scope} if scope is not None else {})
        return await self.web.get("/oauth/start", params=params)

    async def start_login(self, session_id: str, scope: str | None = None) -> httpx.Response:
        """Open the login link and press its button: the redirect to Feishu, or a refusal."""
        page = await self.open_login_link(session_id, scope)
        if page.status_code != 200:
            return page
        action, fields = confirmation_form(page)
        public = urlsplit(self.gateway.settings.public_url)
        origin = f"{public.scheme}://{public.netloc}"
        return await self.web.post(action, data=fields, headers={"Origin": origin})

    async def feishu_consents(self, authorize_url: str, user: str) -> str:
        """The callback URL Feishu sends the browser back to."""
        async with httpx.AsyncClient(trust_env=False) as browser:
            answer = await browser.get(f"{authorize_url}&emulator_user={user}")
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    async def callback(self, callback_url: str) -> httpx.Response:
        parts = urlsplit(callback_url)
        return await self.web.get(f"{parts.path}?{parts.query}")

    async def login(self, user: str, session_id: str | None = None) -> str:
        """Log ``user`` in end to end; returns the open_id."""
        session_id = self.new_session(session_id or f"session-of-{user}")
        start = await self.start_login(session_id)
        assert start.status_code == 302, start.text
        page = await self.callback(await self.feishu_consents(start.headers["location"], user))
        assert page.status_code == 200, page.text
        found = self.emulator.state.config.find_user(user)
        assert found is not None
        return found.open_id

    # -- time and what Feishu saw -----------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """A stretch of time passes for Feishu and the gateway alike."""
        self.emulator.state.clock.advance(seconds)
        self.gateway.clock.advance(seconds)

    def stored(self, open_id: str) -> Tokens:
        loaded = self.store.load_tokens(open_id)
        assert loaded is not None
        return loaded[0]  # type: ignore[no-any-return]

    def feishu_tokens(self, open_id: str) -> dict[str, Any]:
        return self.emulator.state.grants.describe_user(open_id)

    def refresh_calls(self, open_id: str | None = None) -> list[CallRecord]:
        """Refresh calls (of one user); a queued fault is answered before the emulator reads
        the body, so those records name no grant type and no user and are counted too."""
        return [
            c
            for c in self.emulator.state.calls
            if c.path in TOKEN_PATHS
            and c.grant_type != "authorization_code"
            and (open_id is None or c.open_id in (open_id, None))
        ]

    def queue_token_faults(self, *faults: tuple[int, int]) -> None:
        from larkgate.emulator.faults import InjectedFault

        self.emulator.state.faults.queue(
            "token", [InjectedFault(status, code) for status, code in faults]
        )


def fp(token: str) -> str:
    return fingerprint(token)
