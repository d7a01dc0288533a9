"""``larkgate doctor``: checks an installation and says what to fix."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, LARK_MCP_VERSION, ConfigError, Settings

NODE_MIN_MAJOR = 20


def node_version(settings: Settings) -> tuple[int, str]:
    try:
        out = subprocess.run(
            [settings.node_path, "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(
            f"setting {ENV_PREFIX}NODE_PATH: cannot run {settings.node_path!r} ({exc})"
        ) from None
    text = out.stdout.strip()
    match = re.match(r"v(\d+)\.", text)
    if not match:
        raise ConfigError(f"setting {ENV_PREFIX}NODE_PATH: {settings.node_path!r} is not Node.js")
    return int(match.group(1)), text


def lark_mcp_version(settings: Settings) -> str:
    cli = settings.lark_mcp_cli_path
    if not cli.is_file():
        raise ConfigError(
            f"setting {ENV_PREFIX}LARK_MCP_CLI: {cli} not found; run "
            "`npm ci --ignore-scripts` in the LarkGate directory"
        )
    package = cli.parent.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def require_runnable(settings: Settings) -> None:
    """What serve and demo need before starting; raises ConfigError with the fix."""
    major, text = node_version(settings)
    if major < NODE_MIN_MAJOR:
        raise ConfigError(
            f"setting {ENV_PREFIX}NODE_PATH: Node.js {text} is too old, need {NODE_MIN_MAJOR}+"
        )
    lark_mcp_version(settings)


def listen_addresses(settings: Settings) -> list[tuple[int, int, int, Any]]:
    """Where serve will listen, resolved; ConfigError naming the host when it does not
    resolve. Looks only: nothing is bound or created."""
    try:
        found = socket.getaddrinfo(
            settings.host or None, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(
            f"setting {ENV_PREFIX}HOST is invalid: cannot resolve {settings.host!r} ({reason})"
        ) from None
    return [(family, kind, proto, address) for family, kind, proto, _name, address in found]


def require_listenable(settings: Settings) -> None:
    """The address serve listens on resolves and its port is free: checked before anything
    starts, so a typo is one line naming the setting, not a failure after the children."""
    for family, kind, proto, address in listen_addresses(settings):
        # Bound as the server will bind it, then let go; the server binds again right after.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(_bind_refused(settings.host, settings.port, exc)) from None


def _bind_refused(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"setting {ENV_PREFIX}PORT: {host}:{port} is already in use (another gateway or "
            "program listens there); stop it or pick another port"
        )
    if exc.errno == errno.EACCES:
        return f"setting {ENV_PREFIX}PORT: port {port} needs privileges; pick one above 1023"
    return f"setting {ENV_PREFIX}HOST is invalid: cannot listen on {host}:{port} ({exc.strerror})"


def run_checks(settings: Settings) -> int:
    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += 0 if ok else 1
        print(
            f"[{'ok' if ok else 'FIX'}] {what}" + (f"\n      -> {fix}" if fix and not ok else "")
        )

    try:
        major, text = node_version(settings)
        report(major >= NODE_MIN_MAJOR, f"Node.js {text}", f"install Node.js {NODE_MIN_MAJOR}+")
    except ConfigError as exc:
        report(False, "Node.js", str(exc))
    try:
        version = lark_mcp_version(settings)
        report(
            version == LARK_MCP_VERSION,
            f"lark-mcp {version} at {settings.lark_mcp_cli_path}",
            f"LarkGate is tested with {LARK_MCP_VERSION}; run `npm ci --ignore-scripts`",
        )
        report(*_lark_mcp_runs(settings))
    except ConfigError as exc:
        report(False, "lark-mcp", str(exc))
    data_dir_ok, what, fix = _data_dir_writable(settings.data_dir)
    report(data_dir_ok, what, fix)
    key_set = bool(settings.encryption_key.get_secret_value())
    key_file = settings.keys_dir / "primary"
    report(
        key_set or key_file.exists() or data_dir_ok,
        "encryption key: "
        + ("from the setting" if key_set else f"key files in {settings.keys_dir} (made at start)"),
        f"set {ENV_PREFIX}ENCRYPTION_KEY or make {settings.data_dir} writable",
    )
    for name in ("app_id", "app_secret", "public_url"):
        value = getattr(settings, name)
        present = bool(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
        report(present, f"{ENV_PREFIX}{name.upper()} set", f"set {ENV_PREFIX}{name.upper()}")
    if settings.public_url:
        https = settings.public_url.startswith("https://") or "127.0.0.1" in settings.public_url
        report(https, f"public URL {settings.public_url}", "use https:// for a public gateway")
        print(
            "      Feishu app console -> Security settings -> Redirect URLs must list exactly:\n"
            f"      {settings.redirect_uri}"
        )
    print("all good" if problems == 0 else f"{problems} thing(s) to fix")
    return 0 if problems == 0 else 1


def _lark_mcp_runs(settings: Settings) -> tuple[bool, str, str]:
    try:
        out = subprocess.run(
            [settings.node_path, str(settings.lark_mcp_cli_path), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.defpath, "HOME": tempfile.gettempdir()},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, "lark-mcp runs", str(exc)
    return (
        out.returncode == 0,
        f"lark-mcp runs (--version: {out.stdout.strip() or '?'})",
        (out.stderr.strip().splitlines() or ["no output"])[-1],
    )


def _data_dir_writable(path: Path) -> tuple[bool, str, str]:
    """Whether serve can write the data directory, or create it; the check creates nothing
    that stays."""
    if not path.exists():
        parent = next(p for p in path.absolute().parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            return True, f"data directory {path} (`larkgate serve` creates it)", ""
        return False, f"data directory {path}", f"create it, or make {parent} writable"
    try:
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return False, f"data directory {path}", f"make it writable ({exc.strerror})"
    return True, f"data directory {path} writable", ""
