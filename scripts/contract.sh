#!/usr/bin/env bash
# Contract test: schemathesis generates requests from the server's own /openapi.json and
# checks that no response is a 5xx, every status is documented, and every response has the
# documented content type and matches its schema.
# Usage: scripts/contract.sh [max examples per operation, default 30]
#
# Starts `xinge serve` on port 0 with a throwaway data dir, registers and logs in a user so
# the authenticated operations are exercised too, and stops the server however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-30}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

# schemathesis lives in its own venv under target/ so it never touches the system Python.
venv="$PWD/target/contract-venv"
if ! "$venv/bin/python" -c 'import schemathesis' 2>/dev/null ||
    ! "$venv/bin/pip" freeze 2>/dev/null | grep -qxFf scripts/requirements-contract.txt; then
    echo "== installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r scripts/requirements-contract.txt
fi

# XINGE_BIN runs an already built binary instead (e.g. a release build).
bin="${XINGE_BIN:-}"
if [ -z "$bin" ]; then
    echo "== cargo build -p xinge"
    cargo build -p xinge
    bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/xinge"
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# 429 is the right answer to a flood, but schemathesis floods by design: the limits are
# raised so every answer it sees is about the request itself.
cat >"$work/config.toml" <<TOML
[limits]
sends_per_sec = 1000000.0
sends_burst = 1000000.0
pulls_per_sec = 1000000.0
pulls_burst = 1000000.0
registrations_per_ip_burst = 1000000.0
login_failures_per_ip_burst = 1000000.0
login_failures_per_account_burst = 1000000.0
uploads_per_sec = 1000000.0
uploads_burst = 1000000.0

[route]
per_ip_per_sec = 1000000.0
per_ip_burst = 1000000.0
TOML

mkfifo "$work/out"
"$bin" serve --config "$work/config.toml" --data-dir "$work/data" \
    --http-addr 127.0.0.1:0 --tcp-addr 127.0.0.1:0 >"$work/out" 2>"$work/server.log" &
server_pid=$!
# Wait for the ready line (not a sleep): the server prints it once both listeners are bound.
ready=""
exec 3<"$work/out"
if ! IFS= read -r -t 60 ready <&3; then
    cat "$work/server.log"
    echo "!! xinge serve did not become ready in 60 s"
    exit 1
fi
# Keep draining stdout so the server never blocks on a full pipe.
cat <&3 >/dev/null &
http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$ready")
echo "== server ready at $http"
base="http://$http"

curl -fsS -X POST "$base/v1/accounts" -H 'content-type: application/json' \
    -d '{"username":"contract","password":"contract-password"}' >/dev/null
token=$(curl -fsS -X POST "$base/v1/sessions" -H 'content-type: application/json' \
    -d '{"username":"contract","password":"contract-password","device":"schemathesis"}' |
    "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# Logout is left out: it revokes the one token every other operation runs with (it is
# covered by crates/api/tests).
echo "== schemathesis run ($max_examples examples per operation)"
rc=0
# From the scratch dir: schemathesis keeps a cache of past failures in ./.schemathesis, which
# would make runs depend on earlier ones and litter the repository.
(cd "$work" && timeout 300 "$venv/bin/schemathesis" --no-color run "$base/openapi.json" \
    --url "$base" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --exclude-operation-id logout \
    --max-examples "$max_examples" \
    --request-timeout 10 \
    --seed 7) || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "== server log (last 40 lines)"
    tail -n 40 "$work/server.log"
    echo "!! contract test failed (exit $rc)"
    exit "$rc"
fi
echo "== contract: passed"
