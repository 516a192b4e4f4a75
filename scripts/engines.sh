#!/usr/bin/env bash
# Makes sure the engines the tests talk to are up on loopback: starts one that is installed
# but stopped, installs it from Debian's packages when missing. Used by .ci/run.
#   scripts/engines.sh postgres redis nats
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

port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 30); do port_up "$port" && return 0; sleep 1; done
  echo "engines: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

install_deb() {
  echo "engines: installing $1"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

ensure_redis() {
  if port_up 6379; then return 0; fi
  command -v redis-server >/dev/null 2>&1 || install_deb redis-server
  echo "engines: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port Redis 6379
}

ensure_nats() {
  if port_up 4222; then return 0; fi
  command -v nats-server >/dev/null 2>&1 || install_deb nats-server
  echo "engines: starting NATS with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port NATS 4222
}

for engine in "$@"; do
  case "$engine" in
    postgres) ensure_postgres ;;
    redis) ensure_redis ;;
    nats) ensure_nats ;;
    *) echo "engines: unknown engine $engine" >&2; exit 2 ;;
  esac
done
