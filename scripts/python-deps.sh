#!/usr/bin/env bash
# Installs the Python packages the tests use into the venv scripts/contract.sh uses
# (target/contract-venv: never the system Python): the Web Push stand-in's
# (scripts/requirements-webpush.txt). Does nothing when they are already there, pinned.
# crates/notify/tests/webpush.rs finds this venv's python by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/target/contract-venv"
reqs=scripts/requirements-webpush.txt
pinned() {
    local frozen
    frozen=$("$venv/bin/pip" freeze 2>/dev/null) || return 1
    grep -v '^\s*#' "$reqs" | grep -v '^\s*$' | while IFS= read -r line; do
        grep -qixF "$line" <<<"$frozen" || return 1
    done
}
if ! "$venv/bin/python" -c 'import http_ece, py_vapid' 2>/dev/null || ! pinned; then
    echo "== installing the Web Push stand-in's packages into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$reqs"
fi
"$venv/bin/python" -c 'import http_ece, py_vapid' && echo "== python deps ready in $venv"
