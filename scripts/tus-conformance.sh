#!/usr/bin/env bash
# tus conformance with an independent client: scripts/tus-conformance.py uploads files of
# several sizes through tuspy (many small PATCHes, an interrupted upload resumed by a new
# client, checksums) and checks the server's answers against the tus 1.0.0 spec, then
# downloads every file and compares its bytes.
# Usage: scripts/tus-conformance.sh [arguments for tus-conformance.py, e.g. --only resume empty]
#
# Starts `xinge serve` on port 0 with a throwaway data dir, registers and logs in a user,
# and stops the server however it exits. XINGE_BIN runs an already built binary (else it
# is built). XINGE_EXTRA_TOML is appended to the server's config, e.g. a [media] table
# that puts the blobs in S3 (scripts/s3-fake.sh); it must not repeat the [auth] or
# [limits] tables written here (TOML refuses a table defined twice).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

bash scripts/python-deps.sh
venv="$PWD/target/contract-venv"

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

# Cheap password hashing: the test logs in once and is not about passwords. The upload
# rate is raised so every answer is about the request itself, never a 429.
cat >"$work/config.toml" <<TOML
[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[limits]
uploads_burst = 1000000.0
registrations_per_ip_burst = 1000000.0
TOML
if [ -n "${XINGE_EXTRA_TOML:-}" ]; then
    printf '\n%s\n' "$XINGE_EXTRA_TOML" >>"$work/config.toml"
fi

mkfifo "$work/out"
"$bin" serve --config "$work/config.toml" --data-dir "$work/data" \
    --http-addr 127.0.0.1:0 --tcp-addr 127.0.0.1:0 >"$work/out" 2>"$work/server.log" &
server_pid=$!
# Wait for the ready line (not a sleep): the server prints it once both listeners are bound.
ready=""
exec 3<"$work/out"
if ! IFS= read -r -t 60 ready <&3; then
    cat "$work/server.log"
    echo "!! xinge serve exited or did not become ready in 60 s"
    exit 1
fi
# Keep draining stdout so the server never blocks on a full pipe.
cat <&3 >/dev/null &
http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$ready")
echo "== server ready at $http"
base="http://$http"

curl -fsS -X POST "$base/v1/accounts" -H 'content-type: application/json' \
    -d '{"username":"tus_conformance","password":"tus-conformance-password"}' >/dev/null
token=$(curl -fsS -X POST "$base/v1/sessions" -H 'content-type: application/json' \
    -d '{"username":"tus_conformance","password":"tus-conformance-password","device":"tuspy"}' |
    "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')

echo "== tus conformance (tuspy $("$venv/bin/pip" freeze | sed -n 's/^tuspy==//p'))"
rc=0
XINGE_BASE_URL="$base" XINGE_TOKEN="$token" \
    timeout 600 "$venv/bin/python" scripts/tus-conformance.py "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "== server log (last 40 lines)"
    tail -n 40 "$work/server.log"
    echo "!! tus conformance failed (exit $rc)"
    exit "$rc"
fi
echo "== tus conformance: passed"
