"""``larkgate doctor``: checks an installation and says what to fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

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
    report(*_data_dir_writable(settings.data_dir))
    key_set = bool(settings.encryption_key.get_secret_value())
    key_file = settings.keys_dir / "primary"
    report(
        key_set or key_file.exists() or os.access(settings.data_dir, os.W_OK),
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
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return False, f"data directory {path}", f"make it writable ({exc.strerror})"
    return True, f"data directory {path} writable", ""
