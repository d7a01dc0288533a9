"""The admin CLI pointed at no gateway: one line saying where it looked, exit 2, nothing created;
and how it finds the user an operator names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from larkgate.adminctl import lookup_user
from larkgate.store import UserRecord
from larkgate.userkey import user_key
from support import GatewayServer, free_port


def _larkgate_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from ``cwd`` with exactly ``env``, as a newcomer would in a fresh shell."""
    return subprocess.run(
        [sys.executable, "-m", "larkgate.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_admin_commands_without_gateway_data_say_where_they_looked_and_create_nothing(
    tmp_path: Path,
) -> None:
    # No LARKGATE_DATA_DIR, so the default ./data, which does not exist; nothing listens on
    # the port.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LARKGATE_PORT": str(free_port())}
    commands = [
        ["users", "list"],
        ["users", "show", "alice"],
        ["users", "logout", "alice"],
        ["sessions", "list"],
        ["sessions", "end", "--user", "alice"],
        ["instances", "list"],
        ["logs", "alice"],
        ["backup"],
    ]
    for args in commands:
        done = _larkgate_in(tmp_path, env, *args)

        assert done.returncode == 2, (args, done.stdout, done.stderr)
        line = _one_line(done)
        assert f"no gateway data in {tmp_path.resolve() / 'data'}" in line, args
        assert "LARKGATE_DATA_DIR" in line, args

    restore = _larkgate_in(tmp_path, env, "restore", str(tmp_path / "x.lgbackup"))
    assert restore.returncode == 1 and "LARKGATE_ENCRYPTION_KEY" in _one_line(restore)
    doctor = _larkgate_in(tmp_path, env, "doctor")
    assert "[ok] data directory data (`larkgate serve` creates it)" in doctor.stdout
    assert list(tmp_path.iterdir()) == [], "an admin command created state"


def test_instances_commands_without_an_admin_token_say_where_they_looked(
    gateway: GatewayServer, tmp_path: Path
) -> None:
    # A gateway answers on the port, but this shell has neither its token nor its data dir.
    shell = tmp_path / "elsewhere"
    shell.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(shell),
        "LARKGATE_PORT": str(gateway.settings.port),
    }
    for args in (["instances", "list"], ["instances", "stop", "someinstance"]):
        done = _larkgate_in(shell, env, *args)

        assert done.returncode == 2, (args, done.stdout, done.stderr)
        line = _one_line(done)
        assert "no admin token" in line and str(shell.resolve() / "data/admin.token") in line
        assert "LARKGATE_ADMIN_TOKEN" in line and "LARKGATE_DATA_DIR" in line
    assert list(shell.iterdir()) == []


def _record(user_id: str, name: str) -> UserRecord:
    return UserRecord(user_id, "", "", name, 1, None, 0.0, 0.0, True)


def test_users_are_found_by_open_id_hash_or_a_name_only_one_user_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    users = [_record("ou_a", "Alice"), _record("ou_b", "Sam"), _record("ou_c", "Sam")]

    assert lookup_user(users, "ou_a") is users[0]
    assert lookup_user(users, user_key("ou_a")) is users[0]
    assert lookup_user(users, "alice") is users[0]
    assert lookup_user(users, "Sam") is None
    assert "2 users are named 'Sam'" in capsys.readouterr().err
    assert lookup_user(users, "Nobody") is None
    assert "no user 'Nobody'" in capsys.readouterr().err
