"""The README and `--help` describe the settings the code really has."""

from __future__ import annotations

import re
import subprocess
import sys

from larkgate.cli import settings_table
from larkgate.config import describe_settings
from support import REPO


def test_readme_settings_table_matches_the_code() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert block, "README lost its settings markers"
    assert block.group(1) == settings_table(), (
        "README settings table is stale: paste `larkgate settings --markdown`"
    )


def test_help_names_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "larkgate.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for env, _default, _help in describe_settings():
        assert env in out
