"""The Feishu emulator as its own process, with as many users as a benchmark needs.

Like ``python -m larkgate.emulator``, which serves only the three demo users; the users here
are ``bench000``, ``bench001``, ... Run by the benchmark scripts, not by hand.
"""

from __future__ import annotations

import argparse
import logging

from larkgate.emulator import EmulatorConfig, create_app
from larkgate.emulator.config import make_user
from larkgate.emulator.server import bind_loopback, make_server


def bench_login(index: int) -> str:
    return f"bench{index:03d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    users = [make_user(bench_login(i)) for i in range(args.users)]
    app = create_app(EmulatorConfig(users=users))
    sock = bind_loopback("127.0.0.1", args.port)
    make_server(app).run(sockets=[sock])


if __name__ == "__main__":
    main()
