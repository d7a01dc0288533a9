"""Backup while serving, restore elsewhere, and the old session's next tool call works."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from ops_support import Seen, call_tool, gateway_env, larkgate, logged_in_session, wait_until

from larkgate.backup import open_snapshot, state_sealer
from larkgate.crypto import encode_key, new_key
from larkgate.emulator import RunningEmulator
from support import GatewayServer, free_port


def test_backup_while_serving_then_restore_ends_in_a_working_tool_call(
    start_gateway: Callable[..., GatewayServer], emulator: RunningEmulator, tmp_path: Path
) -> None:
    key = encode_key(new_key())
    first = start_gateway(data_dir=tmp_path / "first", encryption_key=key, feishu_probe_interval=0)
    session_id = logged_in_session(first.url, "alice", Seen())
    env = gateway_env(tmp_path / "first", emulator, first.settings.port)
    env["LARKGATE_ENCRYPTION_KEY"] = key

    snapshot = Path(larkgate(env, "backup", "--out", str(tmp_path / "snap")).stdout.strip())
    assert snapshot.is_file() and snapshot.stat().st_mode & 0o077 == 0
    raw = snapshot.read_bytes()
    assert b"alice" not in raw.lower() and session_id.encode() not in raw
    first.stop()

    # Another machine: an empty data directory with the same key.
    second_dir = tmp_path / "second"
    port = free_port()
    env2 = gateway_env(second_dir, emulator, port, LARKGATE_ENCRYPTION_KEY=key)
    stranger = gateway_env(
        second_dir, emulator, port, LARKGATE_ENCRYPTION_KEY=encode_key(new_key())
    )
    refused = larkgate(stranger, "restore", str(snapshot), check=False)
    assert refused.returncode == 1 and "sealed with key id" in refused.stderr
    assert not (second_dir / "larkgate.db").exists()

    restored = larkgate(env2, "restore", str(snapshot))
    assert "restored the store" in restored.stdout
    assert (second_dir / "settings.restored.json").is_file()
    users = larkgate(env2, "users", "list").stdout
    assert "Alice" in users and "logged in" in users

    second = start_gateway(
        data_dir=second_dir, port=port, encryption_key=key, feishu_probe_interval=0
    )
    with httpx.Client(base_url=second.url, timeout=30, trust_env=False) as http:
        result = call_tool(http, session_id)
    assert not result.get("isError"), result
    assert "Alice" in result["content"][0]["text"]


def test_scheduled_backups_keep_the_newest_few(
    start_gateway: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    gateway = start_gateway(
        backup_interval=0.2,
        backup_keep=2,
        backup_dir=tmp_path / "backups",
        feishu_probe_interval=0,
    )
    schedule = gateway.app.state.ops.backups
    written: set[Path] = set()

    def enough() -> bool:
        if schedule.last is not None:
            written.add(schedule.last)
        return len(written) >= 4

    wait_until(enough, what="four scheduled backups")
    gateway.stop()
    kept = sorted((tmp_path / "backups").iterdir())
    assert len(kept) == 2
    sealer = state_sealer(gateway.settings)
    for path in kept:
        assert open_snapshot(path.read_bytes(), sealer).settings["backup_keep"] == 2
