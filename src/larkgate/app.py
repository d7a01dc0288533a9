"""Builds the ASGI app; its lifespan starts and stops the pool and the periodic jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__, errors
from .authserver import AuthServer
from .clock import Clock
from .config import Settings
from .datadir import DataDirLock
from .feishu.keeper import TokenKeeper
from .feishu.oauth import FeishuOAuth
from .feishu.renewal import RenewalJob
from .instances.pool import InstancePool
from .instances.spawner import Spawner, StartFailed
from .keys import open_store
from .login import LoginRoutes
from .ops import Operations
from .store import Store
from .transports.router import Router, Unavailable
from .transports.sessions import SessionTable
from .transports.sse import SseEndpoints
from .transports.streamable import StreamableEndpoint

log = logging.getLogger(__name__)

TOOLS_LIST = {"jsonrpc": "2.0", "id": "larkgate-tools", "method": "tools/list"}


@dataclass
class Gateway:
    """Every long-lived part of a running gateway, for the routes and the admin paths."""

    settings: Settings
    clock: Clock
    store: Store
    http: httpx.AsyncClient
    pool: InstancePool
    keeper: TokenKeeper
    renewal: RenewalJob
    oauth: FeishuOAuth
    sessions: SessionTable
    router: Router
    login: LoginRoutes
    auth: AuthServer
    loop: asyncio.AbstractEventLoop | None = None


def build_gateway(settings: Settings, clock: Clock | None = None) -> Gateway:
    # Everything the gateway writes (store, keys, per-user homes and logs) is its own alone.
    os.umask(0o077)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    clock = clock or Clock()
    store = open_store(settings)
    # The client for Feishu and alert hooks; children have their own (instances.channel).
    # Idle connections close after 2 s, before a server's usual 5 s keep-alive closes them.
    http = httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=200, keepalive_expiry=2.0
        ),
        trust_env=False,
    )
    pool = InstancePool(settings, Spawner(settings), store)
    oauth = FeishuOAuth(settings, http, clock)
    keeper = TokenKeeper(settings, store, oauth, clock)
    renewal = RenewalJob(settings, store, keeper, clock)
    sessions = SessionTable(settings, store)
    router = Router(settings, store, pool, keeper)
    login = LoginRoutes(settings, store, sessions, oauth, clock)
    auth = AuthServer(settings, store, login, clock)
    return Gateway(
        settings, clock, store, http, pool, keeper, renewal, oauth, sessions, router, login, auth
    )


def create_app(
    settings: Settings, clock: Clock | None = None, data_dir_lock: DataDirLock | None = None
) -> Starlette:
    """The gateway as an ASGI app. ``data_dir_lock``: the data directory's lock, when the caller
    took it before building (``larkgate serve``); else the lifespan takes it before anything
    else starts, and a gateway already serving from the directory stops the start."""
    gateway = build_gateway(settings, clock)
    guard = gateway.auth.guard
    streamable = StreamableEndpoint(settings, gateway.sessions, gateway.router, guard)
    sse = SseEndpoints(settings, gateway.sessions, gateway.router, gateway.pool, guard)
    ops = Operations(gateway)

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
        with contextlib.ExitStack() as held:
            if data_dir_lock is None:
                held.enter_context(DataDirLock.claim(settings.data_dir))
            async with _running(gateway, ops):
                yield

    routes = [
        Route("/mcp", streamable.handle, methods=["GET", "POST", "DELETE"]),
        Route("/sse", sse.open_stream, methods=["GET"]),
        Route("/messages", sse.post_message, methods=["POST"]),
        Route("/messages/", sse.post_message, methods=["POST"]),
        Route("/oauth/start", gateway.login.start, methods=["GET"]),
        Route("/oauth/start", gateway.login.confirm, methods=["POST"]),
        Route("/oauth/callback", gateway.login.callback, methods=["GET"]),
        Route("/tools", tools, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *gateway.auth.routes(),
        *ops.routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=ops.middleware(),
        exception_handlers={sqlite3.Error: _store_unavailable},
    )
    app.state.gateway = gateway
    app.state.ops = ops
    return app


@contextlib.asynccontextmanager
async def _running(gateway: Gateway, ops: Operations) -> AsyncIterator[None]:
    """The pool, the operations and the periodic jobs, from start to a clean stop."""
    settings = gateway.settings
    gateway.loop = asyncio.get_running_loop()
    await gateway.pool.start()
    await ops.start()
    sweeper = asyncio.create_task(_sweep_sessions(gateway))
    renewing = asyncio.create_task(gateway.renewal.run(), name="token-renewal")
    log.info("LarkGate %s serving at %s", __version__, settings.public_url)
    try:
        yield
    finally:
        sweeper.cancel()
        renewing.cancel()
        await ops.stop()
        await gateway.pool.close()
        await gateway.keeper.close(timeout=settings.feishu_timeout)
        await gateway.http.aclose()
        gateway.auth.close()
        gateway.store.close()
        log.info("LarkGate stopped; every child was stopped")


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The store cannot be read or written (disk full, read-only): say so, change nothing."""
    log.error("store unavailable: %s", exc)
    return JSONResponse(
        errors.rpc_error(
            None,
            errors.SERVER_ERROR,
            "LarkGate cannot reach its store right now; nothing was changed, please retry",
            errors.STORE_UNAVAILABLE,
        ),
        status_code=503,
        headers={"Retry-After": "30"},
    )


async def _sweep_sessions(gateway: Gateway) -> None:
    interval = min(gateway.settings.reap_interval, gateway.settings.session_idle_timeout)
    while True:
        await asyncio.sleep(interval)
        try:
            gateway.sessions.sweep()
        except Exception:
            log.exception("session sweep failed; will try again")
