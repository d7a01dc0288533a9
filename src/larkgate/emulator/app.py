"""Assembles the emulator's routes into one Starlette app serving both Feishu hosts."""

from __future__ import annotations

from starlette.applications import Starlette

from . import bitable_routes, control_routes, oauth_routes, openapi_routes
from .config import EmulatorConfig
from .state import EmulatorState


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """Build the emulator app; its state is `app.state.emulator`."""
    state = EmulatorState(config or EmulatorConfig())
    # The catch-all goes last so that every specific path is tried first.
    app = Starlette(
        routes=[
            *control_routes.routes,
            *oauth_routes.routes,
            *openapi_routes.routes,
            *bitable_routes.routes,
            *openapi_routes.fallback_routes,
        ]
    )
    app.state.emulator = state
    return app
