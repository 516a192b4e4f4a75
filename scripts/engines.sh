#!/usr/bin/env bash
# Makes sure the engines the tests talk to are up on loopback: starts one that is installed
# but stopped, installs it from Debian's packages when missing. Used by .ci/run.
#   scripts/engines.sh postgres redis nats
# It also starts real clusters on loopback, for the distributed tests and for trying
# failover by hand (each node's pid file, log and data under $XINGE_ENGINES_DIR):
#   scripts/engines.sh nats-cluster    3 NATS servers with JetStream (clients :4301-4303,
#                                      routes :6301-6303); streams can have 3 replicas
#   scripts/engines.sh redis-cluster   Redis Cluster: 3 masters :7001-7003, each with a
#                                      replica :7004-7006, failover after 2 s
# XINGE_NATS_CLUSTER_PORT and XINGE_REDIS_CLUSTER_PORT move the first port of each (the
# routes sit 2000 above the NATS client ports). Run again, it starts only the nodes that
# are down; `scripts/engines.sh stop-clusters` stops them all.
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

dir=${XINGE_ENGINES_DIR:-/tmp/xinge-engines}
nats_base=${XINGE_NATS_CLUSTER_PORT:-4301}
redis_base=${XINGE_REDIS_CLUSTER_PORT:-7001}

# Is the process in pid file $1 alive?
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

ensure_nats_cluster() {
  command -v nats-server >/dev/null 2>&1 || install_deb nats-server
  mkdir -p "$dir"
  local routes="" i
  for i in 0 1 2; do routes+="nats://127.0.0.1:$((nats_base + 2000 + i)),"; done
  for i in 0 1 2; do
    local port=$((nats_base + i)) pid="$dir/nats-$((nats_base + i)).pid"
    alive "$pid" && continue
    setsid "$(command -v nats-server)" -a 127.0.0.1 -p "$port" -js -sd "$dir/nats-$port" \
      --server_name "n$port" --cluster_name xinge \
      --cluster "nats://127.0.0.1:$((port + 2000))" --routes "${routes%,}" \
      -P "$pid" -l "$dir/nats-$port.log" </dev/null >/dev/null 2>&1 &
  done
  for i in 0 1 2; do wait_port "NATS node" $((nats_base + i)); done
  # JetStream needs a meta leader before streams can be made.
  for _ in $(seq 1 50); do
    grep -qs "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
      "$dir"/nats-*.log && return 0
    sleep 0.2
  done
  echo "engines: the NATS cluster elected no JetStream leader" >&2
  return 1
}

ensure_redis_cluster() {
  command -v redis-cli >/dev/null 2>&1 || install_deb redis-server
  mkdir -p "$dir"
  local nodes="" i fresh=0
  for i in 0 1 2 3 4 5; do
    local port=$((redis_base + i))
    nodes+="127.0.0.1:$port "
    alive "$dir/redis-$port.pid" && continue
    [ -f "$dir/nodes-$port.conf" ] || fresh=1
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --daemonize yes --dir "$dir" \
      --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
  done
  for i in 0 1 2 3 4 5; do wait_port "Redis node" $((redis_base + i)); done
  if [ "$fresh" = 1 ]; then
    # shellcheck disable=SC2086
    redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  # Up when the slots are served and (on a fresh cluster) every master has its replica.
  for _ in $(seq 1 100); do
    if redis-cli -p "$redis_base" cluster info 2>/dev/null | grep -q "cluster_state:ok" &&
      { [ "$fresh" = 0 ] || [ "$(redis-cli -p "$redis_base" cluster nodes | grep -c slave)" = 3 ]; }; then
      return 0
    fi
    sleep 0.2
  done
  echo "engines: the Redis Cluster did not reach state ok" >&2
  return 1
}

stop_clusters() {
  local pid
  for pid in "$dir"/nats-*.pid "$dir"/redis-*.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
}

for engine in "$@"; do
  case "$engine" in
    postgres) ensure_postgres ;;
    redis) ensure_redis ;;
    nats) ensure_nats ;;
    nats-cluster) ensure_nats_cluster ;;
    redis-cluster) ensure_redis_cluster ;;
    stop-clusters) stop_clusters ;;
    *) echo "engines: unknown engine $engine" >&2; exit 2 ;;
  esac
done
