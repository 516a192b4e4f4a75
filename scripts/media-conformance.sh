#!/usr/bin/env bash
# The tus conformance run (scripts/tus-conformance.sh, an independent client) twice: on the
# embedded default, blobs on the filesystem; then with the blobs in S3 — moto's server,
# started here by scripts/s3-fake.sh, checking every request's signature — so both blob
# backends serve the same uploads and downloads.
# Usage: scripts/media-conformance.sh (XINGE_BIN: an already built binary, else built)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tus conformance, blobs on the filesystem"
bash scripts/tus-conformance.sh

echo "== tus conformance, blobs in S3 (moto)"
export S3_FAKE_DIR="$PWD/target/s3-fake-conformance"
trap 'bash scripts/s3-fake.sh stop' EXIT
eval "$(bash scripts/s3-fake.sh)"
XINGE_EXTRA_TOML="[media.s3]
endpoint = \"$S3_ENDPOINT\"
bucket = \"$S3_BUCKET\"
region = \"$S3_REGION\"
access_key_id = \"$S3_ACCESS_KEY_ID\"
secret_access_key = \"$S3_SECRET_ACCESS_KEY\"
prefix = \"conformance\"
allow_http = true
" bash scripts/tus-conformance.sh
# The uploads' blobs went to the bucket, not the filesystem.
puts=$(grep -c 'PUT /[^ ]*/conformance/' "$S3_FAKE_DIR/log" || true)
if [ "$puts" -lt 1 ]; then
    echo "!! no blob was written to S3" >&2
    exit 1
fi
echo "== $puts blob PUTs reached S3"
