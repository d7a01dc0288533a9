"""``larkgate``: serve, demo, doctor and the admin commands."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence

from . import __version__
from .config import ConfigError, Settings, describe_settings, load_settings
from .logs import setup_logging


def _settings_epilog() -> str:
    lines = ["settings (environment variables; LARKGATE_CONFIG names an optional TOML file):"]
    for env, default, help_text in describe_settings():
        shown = f" [default: {default}]" if default not in ("", "None", "[]") else ""
        lines.append(f"  {env}\n      {help_text}{shown}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="larkgate",
        description="One MCP endpoint for a whole team: one lark-mcp process per Feishu user.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"larkgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway against Feishu/Lark with settings from the environment",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="run the gateway with the bundled Feishu emulator on loopback (no Feishu app needed)",
        description=textwrap.dedent(
            """\
            Starts the Feishu emulator and the gateway on 127.0.0.1. Connect an MCP client to
            http://127.0.0.1:PORT/mcp or /sse, open the login link it shows, and pick a demo
            user. State goes to LARKGATE_DATA_DIR (default ./.larkgate/demo)."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument("--emulator-port", type=int, default=0, help="emulator port (default any)")
    demo.set_defaults(run=_demo)

    doctor = commands.add_parser(
        "doctor", help="check Node.js, lark-mcp, the data directory, the key and the URLs"
    )
    doctor.set_defaults(run=_doctor)

    rotate = commands.add_parser(
        "rotate-key",
        help="seal every stored token under a new key; a running gateway follows without restart",
        description=textwrap.dedent(
            """\
            Without LARKGATE_ENCRYPTION_KEY: writes a new key file into <data_dir>/keys, makes it
            the primary key and re-seals every record under it. A gateway running on the same
            data directory picks the new key up by itself. Old key files stay readable, so
            nothing in flight breaks.
            Later, rotate-key --retire is the clean-up: it makes no new key, re-seals any record
            still under an old key with the current one, and removes the key files no record
            uses any more. It keeps (and names) a key that sealed a backup in the backup
            directory, which could not be restored without it; --force removes such keys too.
            With LARKGATE_ENCRYPTION_KEY: set it to the new key, list the old one in
            LARKGATE_PREVIOUS_ENCRYPTION_KEYS, restart the gateway, then run this to re-seal."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "--retire",
        action="store_true",
        help="do not rotate: remove the key files no record uses any more (after a rotation)",
    )
    rotate.add_argument(
        "--force",
        action="store_true",
        help="with --retire: remove keys that backups in the backup directory need as well "
        "(those backups can no longer be restored)",
    )
    rotate.set_defaults(run=_rotate_key)

    settings_cmd = commands.add_parser("settings", help="print every setting with its help")
    settings_cmd.add_argument(
        "--markdown", action="store_true", help="print the README's settings table"
    )
    settings_cmd.set_defaults(run=_print_settings)

    from .adminctl import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"larkgate: {exc}", file=sys.stderr)
        return 2
    return code


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_for_serving()
    return _run(settings)


def _run(settings: Settings, banner: str = "") -> int:
    """Serve until stopped. Before anything is touched (the store, children a previous run
    left, the port), take the data directory's lock: a gateway already serving from it stops
    this one with one line, and nothing changes."""
    import uvicorn

    from .app import create_app
    from .datadir import DataDirLock
    from .doctor import listen_addresses, require_listenable, require_runnable
    from .httpserver import server_config

    require_runnable(settings)
    listen_addresses(settings)  # a host that does not resolve creates not even the directory
    with DataDirLock.claim(settings.data_dir) as lock:
        require_listenable(settings)
        if banner:
            print(banner, flush=True)
        setup_logging(settings.log_level, settings.log_format)
        app = create_app(settings, data_dir_lock=lock)
        server = uvicorn.Server(server_config(app, settings))
        server.run()
    return 0 if server.started else 3  # uvicorn's own code for a server that never started


def _demo(args: argparse.Namespace) -> int:
    from .emulator import EmulatorConfig, RunningEmulator

    emulator_config = EmulatorConfig()
    os.environ.setdefault("LARKGATE_DATA_DIR", "./.larkgate/demo")
    # The demo shows the login-link flow on both endpoints, so curl and the Inspector work
    # without an OAuth client; `serve` defaults /mcp to OAuth.
    os.environ.setdefault("LARKGATE_MCP_AUTH", "login_link")
    with RunningEmulator(emulator_config, port=args.emulator_port) as emulator:
        settings = load_settings(
            app_id=emulator_config.app_id,
            app_secret=emulator_config.app_secret,
            open_base_url=emulator.url,
            accounts_base_url=emulator.url,
            public_url=f"http://127.0.0.1:{args.port}",
            host="127.0.0.1",
            port=args.port,
        )
        names = ", ".join(u.name for u in emulator_config.users)
        banner = textwrap.dedent(
            f"""\
            LarkGate demo
              gateway   http://127.0.0.1:{args.port}  (MCP: /mcp or /sse)
              emulator  {emulator.url}  (stands in for Feishu; users: {names})
              data      {settings.data_dir}
            Try:  curl http://127.0.0.1:{args.port}/tools
            Connect an MCP client to http://127.0.0.1:{args.port}/mcp, call a tool, open the
            login link it answers with, and pick a demo user. Ctrl-C stops everything."""
        )
        return _run(settings, banner)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    settings = load_settings()
    return run_checks(settings)


def settings_table() -> str:
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for env, default, help_text in describe_settings():
        shown = default if default not in ("", "None", "[]") else ""
        rows.append(f"| `{env}` | {shown} | {help_text} |")
    return "\n".join(rows)


def _rotate_key(args: argparse.Namespace) -> int:
    from .keys import rotate_key_command

    if args.force and not args.retire:
        print("larkgate rotate-key: --force only goes with --retire", file=sys.stderr)
        return 2
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return rotate_key_command(settings, retire=args.retire, force=args.force)


def _print_settings(args: argparse.Namespace) -> int:
    print(settings_table() if args.markdown else _settings_epilog())
    return 0


if __name__ == "__main__":
    sys.exit(main())
