#!/usr/bin/env bash
# Create (or refresh) .venv with the pinned environment and install salad_ros into it, editable.
# Idempotent: a second run with unchanged requirements does nothing but a quick check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SALAD_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.salad_ros-requirements.sha256"
want="$(cat "$root/requirements.txt" "$root/setup.py" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  if ! "$python" -m venv "$venv"; then
    echo "[setup] '$python -m venv' failed: on Debian/Ubuntu install it with 'sudo apt-get install python3-venv'" >&2
    exit 1
  fi
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing pinned requirements into $venv (first run takes a few minutes)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt"
# setuptools' editable-install notice is noise here; show the log only if the install fails.
if ! "$venv/bin/python" -m pip install --quiet --no-deps -e "$root" > "$venv/.salad_ros-install.log" 2>&1; then
  cat "$venv/.salad_ros-install.log" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "[setup] done"
