#!/usr/bin/env bash
# Makes sure the engines the tests talk to are up on loopback: starts one that is installed
# but stopped, installs it from Debian's packages when missing. Used by .ci/run.
#   scripts/engines.sh postgres
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
  if pg_up; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "engines: installing PostgreSQL"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local v; v=$(ls /etc/postgresql | sort -V | tail -n 1)
    # Tests connect over loopback without a password, as on the development machines.
    sed -i 's/^\(host.*127.0.0.1\/32\s*\)\S*$/\1trust/' "/etc/postgresql/$v/main/pg_hba.conf"
  fi
  echo "engines: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  if ! pg_up; then echo "engines: PostgreSQL did not come up on 127.0.0.1:5432" >&2; return 1; fi
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || createdb -h 127.0.0.1 -U postgres test
}

for engine in "$@"; do
  case "$engine" in
    postgres) ensure_postgres ;;
    *) echo "engines: unknown engine $engine" >&2; exit 2 ;;
  esac
done
