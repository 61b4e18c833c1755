#!/usr/bin/env bash
# Create (or reuse) the verl engine's virtual environment and print its path.
# The venv lives outside the clone, keyed by a hash of this script and its requirement/constraint
# files, so CI reuses it until one of them changes: ${LONGRL_CI_CACHE:-/root/.cache/longrl-ci}/venv-verl-<hash>.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${LONGRL_CI_CACHE:-/root/.cache/longrl-ci}"
hash="$(cat "$here/venv-verl.sh" "$here/requirements-verl.txt" "$here/constraints-verl.txt" | sha256sum | cut -c1-12)"
venv="$cache/venv-verl-$hash"
py="${PY:-python3}"
if [ ! -f "$venv/.installed" ]; then
    mkdir -p "$cache"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q torch==2.13.0 -c "$here/constraints-verl.txt" >&2
    "$venv/bin/python" -m pip install -q -r "$here/requirements-verl.txt" -c "$here/constraints-verl.txt" >&2
    touch "$venv/.installed"
fi
# longrl from this clone, editable (redone when the venv last pointed at another clone or pyproject.toml,
# which declares the "verl.plugins" entry point, changed).
src="$repo $(sha256sum "$repo/pyproject.toml" | cut -c1-12)"
if [ "$(cat "$venv/.longrl-src" 2>/dev/null)" != "$src" ]; then
    "$venv/bin/python" -m pip install -q --no-deps -e "$repo" >&2
    echo "$src" > "$venv/.longrl-src"
fi
echo "$venv"
