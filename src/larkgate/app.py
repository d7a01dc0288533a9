"""Builds the ASGI app; its lifespan starts and stops the pool and the periodic jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__, errors
from .clock import Clock
from .config import ConfigError, Settings
from .crypto import Sealer, decode_key, load_or_create_key_file
from .feishu.keeper import TokenKeeper
from .feishu.oauth import FeishuOAuth
from .instances.pool import InstancePool
from .instances.spawner import Spawner, StartFailed
from .login import LoginRoutes
from .store import Store
from .transports.router import Router, Unavailable
from .transports.sessions import SessionTable
from .transports.sse import SseEndpoints
from .transports.streamable import StreamableEndpoint

log = logging.getLogger(__name__)

TOOLS_LIST = {"jsonrpc": "2.0", "id": "larkgate-tools", "method": "tools/list"}


def make_sealer(settings: Settings) -> Sealer:
    text = settings.encryption_key.get_secret_value()
    if text:
        try:
            return Sealer(decode_key(text))
        except ValueError as exc:
            raise ConfigError(f"setting LARKGATE_ENCRYPTION_KEY is invalid: {exc}") from None
    key_file = settings.data_dir / "secret.key"
    try:
        return Sealer(load_or_create_key_file(key_file))
    except ValueError as exc:
        raise ConfigError(f"key file {key_file} is invalid: {exc}") from None


def open_store(settings: Settings) -> Store:
    """The store, refusing a key that does not open what is already sealed there."""
    sealer = make_sealer(settings)
    store = Store(settings.data_dir / "larkgate.db", sealer)
    if not store.check_key():
        store.close()
        raise ConfigError(
            "setting LARKGATE_ENCRYPTION_KEY does not open the existing store "
            f"{settings.data_dir / 'larkgate.db'}: wrong key"
        )
    return store


@dataclass
class Gateway:
    """Every long-lived part of a running gateway, for the routes and the admin paths."""

    settings: Settings
    clock: Clock
    store: Store
    http: httpx.AsyncClient
    pool: InstancePool
    keeper: TokenKeeper
    oauth: FeishuOAuth
    sessions: SessionTable
    router: Router
    login: LoginRoutes
    loop: asyncio.AbstractEventLoop | None = None


def build_gateway(settings: Settings, clock: Clock | None = None) -> Gateway:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    clock = clock or Clock()
    store = open_store(settings)
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
        trust_env=False,
    )
    pool = InstancePool(settings, Spawner(settings, http), store)
    oauth = FeishuOAuth(settings, http, clock)
    keeper = TokenKeeper(settings, store, oauth, clock)
    sessions = SessionTable(settings, store)
    router = Router(settings, store, pool, keeper, http)
    login = LoginRoutes(settings, store, sessions, oauth)
    return Gateway(settings, clock, store, http, pool, keeper, oauth, sessions, router, login)


def create_app(settings: Settings, clock: Clock | None = None) -> Starlette:
    gateway = build_gateway(settings, clock)
    streamable = StreamableEndpoint(settings, gateway.sessions, gateway.router)
    sse = SseEndpoints(settings, gateway.sessions, gateway.router, gateway.pool)

    async def tools(request: Request) -> Response:
        try:
            child = await gateway.pool.default_child()
            reply = await gateway.router.send_to_child(child, TOOLS_LIST, token=None)
        except (StartFailed, Unavailable) as exc:
            return JSONResponse(
                {"error": {"code": errors.INSTANCE_UNAVAILABLE, "message": str(exc)}},
                status_code=503,
            )
        return JSONResponse({"tools": reply.get("result", {}).get("tools", [])})

    async def health(request: Request) -> Response:
        counts = gateway.pool.counts()
        ok = counts.default_ready
        return JSONResponse(
            {
                "status": "ok" if ok else "degraded",
                "version": __version__,
                "instances": {
                    "users": counts.users,
                    "spares": counts.spares,
                    "starting": counts.starting,
                    "failed": counts.failed,
                    "limit": settings.max_instances,
                },
                "default_instance": "ready" if counts.default_ready else "down",
                "sessions": gateway.sessions.count(),
            },
            status_code=200 if ok else 503,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.loop = asyncio.get_running_loop()
        await gateway.pool.start()
        sweeper = asyncio.create_task(_sweep_sessions(gateway))
        log.info("LarkGate %s serving at %s", __version__, settings.public_url)
        try:
            yield
        finally:
            sweeper.cancel()
            await gateway.pool.close()
            await gateway.http.aclose()
            gateway.store.close()
            log.info("LarkGate stopped; every child was stopped")

    routes = [
        Route("/mcp", streamable.handle, methods=["GET", "POST", "DELETE"]),
        Route("/sse", sse.open_stream, methods=["GET"]),
        Route("/messages", sse.post_message, methods=["POST"]),
        Route("/messages/", sse.post_message, methods=["POST"]),
        Route("/oauth/start", gateway.login.start, methods=["GET"]),
        Route("/oauth/callback", gateway.login.callback, methods=["GET"]),
        Route("/tools", tools, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app


async def _sweep_sessions(gateway: Gateway) -> None:
    interval = min(gateway.settings.reap_interval, gateway.settings.session_idle_timeout)
    while True:
        await asyncio.sleep(interval)
        try:
            gateway.sessions.sweep()
        except Exception:
            log.exception("session sweep failed; will try again")
