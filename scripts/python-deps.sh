#!/usr/bin/env bash
# Installs the Python packages the tests use into the venv scripts/contract.sh uses
# (target/contract-venv: never the system Python): the Web Push stand-in's
# (scripts/requirements-webpush.txt), the independent tus client of
# scripts/tus-conformance.sh (scripts/requirements-tus.txt) and the S3 stand-in of
# scripts/s3-fake.sh (scripts/requirements-s3.txt). Does nothing when they are already
# there, pinned. crates/notify/tests/webpush.rs finds this venv's python by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/target/contract-venv"
reqs=(scripts/requirements-webpush.txt scripts/requirements-tus.txt scripts/requirements-s3.txt)
# Imports from each file: a package that is listed but broken shows here, not mid-test.
imports='import http_ece, py_vapid, tusclient, moto.server, boto3'
pinned() {
    local frozen
    frozen=$("$venv/bin/pip" freeze 2>/dev/null) || return 1
    cat "${reqs[@]}" | grep -v '^\s*#' | grep -v '^\s*$' | while IFS= read -r line; do
        grep -qixF "$line" <<<"$frozen" || return 1
    done
}
if ! "$venv/bin/python" -c "$imports" 2>/dev/null || ! pinned; then
    echo "== installing the tests' Python packages into $venv"
    python3 -m venv "$venv"
    # All files in one run, so pip resolves them together: a package two of them pin
    # differently fails here instead of one file's install quietly undoing another's.
    "$venv/bin/pip" install --quiet "${reqs[@]/#/-r}"
fi
"$venv/bin/python" -c "$imports" && echo "== python deps ready in $venv"
