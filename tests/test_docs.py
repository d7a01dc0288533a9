"""The README and `--help` describe the settings the code really has."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from larkgate.cli import build_parser, settings_table
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


def _readme_shell_lines() -> list[str]:
    """Every line of the README's ```sh blocks (also those indented inside a list)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", readme, re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_larkgate_command_in_the_readme_is_the_venvs_and_parses() -> None:
    # scripts/setup.sh puts `larkgate` in .venv/bin, which is not on a newcomer's PATH.
    invocations = []
    for line in _readme_shell_lines():
        for command in line.split("&&"):
            words = shlex.split(command, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)  # VAR=value before the command
            if words and words[0].endswith("larkgate"):
                assert words[0] == ".venv/bin/larkgate", line
                invocations.append(words[1:])
    assert len(invocations) > 10

    parser = build_parser()
    for words in invocations:
        # Placeholders stand for a value; "[...]" and "| ..." are the alternatives shown.
        shown = " ".join(words).split("|")[0].split("[")[0].split()
        args = ["x" if w.startswith("<") else w for w in shown]
        try:
            parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"README: `larkgate {' '.join(words)}` does not parse") from None
