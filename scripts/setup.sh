#!/usr/bin/env bash
# Installs LarkGate into ./.venv and the pinned lark-mcp into ./node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
