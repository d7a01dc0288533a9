"""A local stand-in for Feishu's OAuth and OpenAPI, with the real rules, for tests and demos.

Nothing here reaches Feishu. Tests start a `RunningEmulator`, point the gateway (and
lark-mcp, via `-d URL`) at its `url`, and steer it through the `/_emulator/*` endpoints
or its in-process `state`.
"""

from .app import create_app
from .clock import Clock
from .config import EmulatedUser, EmulatorConfig
from .recording import CallRecord
from .server import RunningEmulator
from .state import EmulatorState

__all__ = [
    "CallRecord",
    "Clock",
    "EmulatedUser",
    "EmulatorConfig",
    "EmulatorState",
    "RunningEmulator",
    "create_app",
]
