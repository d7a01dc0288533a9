"""`python -m larkgate.emulator`: a standalone Feishu emulator on loopback."""

from __future__ import annotations

import argparse
import logging
import sys

from .app import create_app
from .config import DEFAULT_HOST, DEFAULT_PORT, EmulatorConfig
from .server import bind_loopback, make_server

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m larkgate.emulator",
        description="Serve a Feishu OAuth + OpenAPI emulator for tests and demos.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks one")
    defaults = EmulatorConfig()
    parser.add_argument("--app-id", default=defaults.app_id, help="the emulated app's id")
    parser.add_argument(
        "--app-secret", default=defaults.app_secret, help="the emulated app's secret"
    )
    parser.add_argument("--log-level", default="INFO", help="level of the emulator's log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sock = bind_loopback(args.host, args.port)
    except (ValueError, OSError) as refused:
        print(f"cannot listen: {refused}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    app = create_app(EmulatorConfig(app_id=args.app_id, app_secret=args.app_secret))
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.info("Feishu emulator on http://%s:%d", host, sock.getsockname()[1])
    make_server(app).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
