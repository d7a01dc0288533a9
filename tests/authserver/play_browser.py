"""The BROWSER program for mcp-remote: a person who allows the app and logs in to Feishu.

mcp-remote opens its authorization URL through ``xdg-open``, which runs ``$BROWSER <url>``.
This plays the person (see ``oauth_person.approve``) as the emulated Feishu user named by
``LARKGATE_TEST_USER``, then visits the redirect it ends on: mcp-remote's own listener on
127.0.0.1, which takes the code from there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from oauth_person import approve, browser, loopback_only  # noqa: E402


def main(url: str) -> int:
    with browser() as person:
        callback = approve(url, os.environ["LARKGATE_TEST_USER"], person)
        answer = person.get(loopback_only(callback))
    print(f"mcp-remote's callback answered HTTP {answer.status_code}", flush=True)
    return 0 if answer.status_code < 400 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
