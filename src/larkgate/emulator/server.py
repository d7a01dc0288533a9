"""Serving the emulator with uvicorn on a background thread, for tests and the demo."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .config import DEFAULT_HOST, EmulatorConfig
from .state import EmulatorState

logger = logging.getLogger(__name__)

# How long a stop waits for in-flight requests (a test may have made one hang) to finish.
_GRACEFUL_STOP_SECONDS = 1
_POLL_SECONDS = 0.01


def require_loopback(host: str) -> None:
    """Refuse any address other hosts could reach: the emulator hands out tokens freely."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the Feishu emulator only listens on loopback, not on {host!r}")


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port; port 0 picks a free one."""
    require_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Naming IPPROTO_TCP matters: asyncio only turns Nagle off on accepted sockets whose
    # protocol says TCP, and with Nagle on every small answer waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def make_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        # None keeps uvicorn's hands off the process's logging setup.
        log_config=None,
        timeout_graceful_shutdown=_GRACEFUL_STOP_SECONDS,
    )
    return uvicorn.Server(config)


class RunningEmulator:
    """The emulator listening on loopback in a background thread.

    Use as a context manager, or call start() and stop(). `url` is its base URL and
    `state` the in-process EmulatorState behind it.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        require_loopback(host)
        self.app = create_app(config)
        self.state: EmulatorState = self.app.state.emulator
        self.host = host
        self.port = port
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> RunningEmulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        self._socket = bind_loopback(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._server = make_server(self.app)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"feishu-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_until_accepting()
        except BaseException:
            self.stop()
            raise
        logger.info("emulator listening on %s", self.url)
        return self

    def _wait_until_accepting(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the emulator's server thread exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("the emulator did not start in time")
            time.sleep(_POLL_SECONDS)
        # "started" is set once listening; one real connection proves it from outside.
        with socket.create_connection((self.host, self.port), timeout=self._startup_timeout):
            pass

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=_GRACEFUL_STOP_SECONDS + 5)
        if thread.is_alive():
            logger.warning("emulator did not stop gracefully; forcing it")
            server.force_exit = True
            thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        logger.info("emulator on port %d stopped", self.port)

    def __enter__(self) -> RunningEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
