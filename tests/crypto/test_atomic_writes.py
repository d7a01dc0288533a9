"""A crash at any point leaves either the old or the new record: token writes and key files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from larkgate.config import load_settings
from larkgate.keys import open_store, write_private_file

WRITER = textwrap.dedent(
    """
    import sys
    from larkgate.config import load_settings
    from larkgate.keys import open_store
    from larkgate.store import Tokens

    store = open_store(load_settings(data_dir=sys.argv[1]))
    n = 0
    while True:
        loaded = store.load_tokens("ou_alice")
        version = loaded[1] if loaded else None
        tokens = Tokens(f"u-{n}", 2e9, f"ur-{n}", 2e9 + 86400)
        if version is None:
            store.upsert_user("ou_alice", union_id="", tenant_key="", name="a", tokens=tokens)
        else:
            assert store.replace_tokens("ou_alice", tokens, version)
        print(n, flush=True)
        n += 1
    """
)


def test_a_writer_killed_mid_write_leaves_a_whole_record(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    acknowledged = -1
    for line in writer.stdout:
        acknowledged = int(line)
        if acknowledged >= 200:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)

    store = open_store(load_settings(data_dir=tmp_path))
    tokens, _version = store.load_tokens("ou_alice")
    store.close()

    written = int(tokens.access_token.removeprefix("u-"))
    assert written >= acknowledged
    assert tokens.refresh_token == f"ur-{written}"


def test_a_key_file_write_that_fails_leaves_the_old_file_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "primary"
    write_private_file(target, "old\n")

    def crash(*_args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        write_private_file(target, "new\n")

    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["primary"]
    assert oct(target.stat().st_mode & 0o777) == "0o600"
