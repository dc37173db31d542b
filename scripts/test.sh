#!/usr/bin/env bash
# The test command: sets up .venv if needed, lints the tree (ruff, config in ruff.toml), then runs
# the whole suite (CPU only). Extra arguments go to pytest, e.g. scripts/test.sh -k database -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
source "$root/scripts/ros_env.sh"
cd "$root"
echo "[test] ruff check (ruff.toml)"
"$root/.venv/bin/ruff" check --quiet .
exec "$root/.venv/bin/python" -m pytest test "$@"
