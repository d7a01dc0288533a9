"""Everything that lets people run the gateway, bundled: metrics, monitor, alerts, backups, admin.

`create_app` builds one `Operations` beside the gateway, adds its routes and middleware, and
starts and stops it in the lifespan. The gateway's own modules only keep counters and call
two small hooks (the router's message and child-hop observations).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .admin.auth import AdminAuth, admin_token
from .admin.routes import AdminSite
from .alerts import AlertManager
from .backup import BackupSchedule, state_sealer
from .metrics import CONTENT_TYPE, Metrics, ObservedRequests, StateCollector
from .monitor import Monitor, Sampler

if TYPE_CHECKING:
    from .app import Gateway


class Operations:
    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        self.started_at = time.time()
        self.metrics = Metrics()
        self.sampler = Sampler(settings.sample_history)
        self.alerts = AlertManager(settings, gateway.http, self.metrics)
        self.monitor = Monitor(gateway, self.sampler, self.alerts, self.metrics)
        self.backups = BackupSchedule(settings, state_sealer(settings), self.metrics)
        self.metrics.registry.register(StateCollector(gateway, self.sampler))
        self.admin = AdminSite(gateway, self, AdminAuth(admin_token(settings, create=True)))
        gateway.router.metrics = self.metrics

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.scrape, methods=["GET"]), *self.admin.routes()]

    def middleware(self) -> list[Middleware]:
        return [Middleware(ObservedRequests, metrics=self.metrics)]

    async def scrape(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def start(self) -> None:
        self.monitor.start()
        self.backups.start()

    async def stop(self) -> None:
        await self.monitor.stop()
        await self.backups.stop()
        await self.alerts.drain()
