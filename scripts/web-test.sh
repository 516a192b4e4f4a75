#!/usr/bin/env bash
# End-to-end tests of the web client (web/): the real `xinge serve` binary driven through
# Debian's Chromium by playwright-core under Node's own test runner. Installs what is missing:
# Chromium from Debian's packages, playwright-core (pinned in web/package-lock.json) from npm,
# the Web Push stand-in's Python packages (scripts/python-deps.sh) from PyPI.
# Screenshots of the main screens land in test-output/web/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium (Debian)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d web/node_modules/playwright-core ]; then
    echo "== npm ci (web/)"
    (cd web && npm ci --no-audit --no-fund)
fi

# The Web Push stand-in (scripts/webpush-fake.py) the push test sends to: its venv.
bash scripts/python-deps.sh

echo "== cargo build -p xinge --bin xinge"
cargo build -p xinge --bin xinge
export XINGE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/xinge"

echo "== node --test web/tests"
rm -rf test-output/web
cd web
# One file at a time: each starts its own server and browser, and the machine is small.
exec timeout 600 node --test --test-concurrency=1 tests/
