#!/usr/bin/env bash
# CPU per 1:1 message of each distributed role and engine, for the capacity table in
# docs/BENCHMARKS.md: one route, gateway, api and push process on the local PostgreSQL,
# Redis and NATS (a schema and key prefix of their own, removed at the end), `xinge bench
# direct` against them, and each process's CPU (utime + stime from /proc) read over the
# middle of the traffic (from 2 s after it starts to 2 s before it ends).
#   scripts/bench-cluster.sh RATE SECS     (after cargo build --release)
# Prints one line per process: CPU seconds in the window and microseconds per offered
# message (a run that saturates, delivered/s below RATE, reads low), and for each role the
# NATS messages its client sent and received per offered message.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-300}
secs=${2:-14}
[ "$secs" -ge 8 ] || { echo "SECS must be at least 8" >&2; exit 2; }
bash scripts/engines.sh postgres redis nats >/dev/null
bin=$PWD/target/release/xinge
tag=xbench$$
dir=$(mktemp -d)
pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $tag CASCADE" >/dev/null 2>&1 || true
  redis-cli -h 127.0.0.1 --scan --pattern "$tag*" 2>/dev/null | xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
  # The push events' JetStream stream, deleted over NATS's text protocol (no CLI needed).
  { exec 3<>/dev/tcp/127.0.0.1/4222 &&
    printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' \
      "$(echo "$tag" | tr 'a-z-' 'A-Z_')_PUSH" >&3 && timeout 2 head -c 200 <&3 >/dev/null; } 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# Limits raised out of the way as for the bench's own server: it measures what the
# processes carry, not the per-user limits.
cat >"$dir/cluster.toml" <<EOF
[auth]
token_secret = "bench-cluster-secret-bench-cluster-secret"
argon2_memory_kib = 256
argon2_iterations = 1
[store]
postgres_url = "postgres://postgres@127.0.0.1:5432/test"
postgres_schema = "$tag"
[cluster]
nats_url = "nats://127.0.0.1:4222"
redis_url = "redis://127.0.0.1:6379"
prefix = "$tag"
[limits]
sends_per_sec = 1000000.0
sends_burst = 1000000.0
pulls_per_sec = 1000000.0
pulls_burst = 1000000.0
registrations_per_ip_burst = 1000000.0
[gateway]
max_connections = 19500
[gateway.admission]
per_ip_per_sec = 1000000.0
per_ip_burst = 1000000.0
EOF
cfg=$dir/cluster.toml
start() {
  XINGE_LOG=warn "$bin" "$@" --config "$cfg" >>"$dir/roles.log" 2>&1 &
  pids+=($!)
}
start route --node-id 1 --http-addr 127.0.0.1:18600
start gateway --node-id 10 --http-addr 127.0.0.1:18601 --tcp-addr 127.0.0.1:18602
start api --node-id 20 --http-addr 127.0.0.1:18680
start push --node-id 30 --http-addr 127.0.0.1:18670
names=(route gateway api push)
for _ in $(seq 1 60); do
  curl -sf http://127.0.0.1:18600/v1/route | grep -q tcp && break
  sleep 0.5
done
for _ in $(seq 1 60); do
  curl -sf http://127.0.0.1:18680/metrics >/dev/null && break
  sleep 0.5
done

ticks() { # utime + stime of one process, in clock ticks; nothing if it is gone
  cut -d')' -f2- "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'
}
declare -A base # clock ticks of every process measured, at the start of the window
mark() { local p; for p in "$@"; do base[$p]=$(ticks "$p"); done; }
# CPU ticks the given processes spent since `mark`: one that started in the window counts
# whole; one that ended in it is lost (PostgreSQL keeps its pool's backends, so few do).
spent() {
  local t=0 p now
  for p in "$@"; do
    now=$(ticks "$p")
    [ -n "$now" ] && t=$((t + now - ${base[$p]:-0}))
  done
  echo "$t"
}
engine_pids() { pgrep -x "$1" | tr '\n' ' '; }
ports=(18600 18601 18680 18670) # each role's HTTP port, in the order of `names`
nats_msgs() { # NATS messages (in + out) one role's client has counted (updated every 250 ms)
  curl -sf "http://127.0.0.1:$1/metrics" | awk '/^xinge_nats_messages_total/ {s += $2} END {print s + 0}'
}

out=$dir/bench.out
taskset -c 1 "$bin" bench direct --server http://127.0.0.1:18680 --route http://127.0.0.1:18600 \
  --users 1000 --rate "$rate" --duration-secs "$secs" --out "$dir/results" >"$out" 2>&1 &
bench=$!
for _ in $(seq 1 600); do grep -q "offering" "$out" && break; sleep 0.2; done
sleep 2
mark "${pids[@]}" $(engine_pids postgres) $(engine_pids redis-server) $(engine_pids nats-server)
declare -A bus0 bus
for i in "${!names[@]}"; do bus0[${names[$i]}]=$(nats_msgs "${ports[$i]}"); done
t0=$(date +%s.%N)
sleep $((secs - 4))
t1=$(date +%s.%N)
declare -A used
for i in "${!names[@]}"; do used[${names[$i]}]=$(spent "${pids[$i]}"); done
for i in "${!names[@]}"; do bus[${names[$i]}]=$(( $(nats_msgs "${ports[$i]}") - ${bus0[${names[$i]}]} )); done
used[postgres]=$(spent $(engine_pids postgres))
used[redis]=$(spent $(engine_pids redis-server))
used[nats]=$(spent $(engine_pids nats-server))
wait "$bench" || true
grep -E "delivered/s|p99|lost" "$out" || cat "$out"
hz=$(getconf CLK_TCK)
window=$(echo "$t1 - $t0" | bc -l)
msgs=$(echo "$rate * $window" | bc -l)
# Per offered message: a saturated run (delivered/s below the rate) reads low.
for k in route gateway api push postgres redis nats; do
  d=${used[$k]}
  printf '%-8s %6.2f s CPU  %8.1f us/msg' "$k" "$(echo "$d / $hz" | bc -l)" \
    "$(echo "$d / $hz * 1000000 / $msgs" | bc -l)"
  # The NATS messages each role's client sent and received, per message (JetStream's
  # acks and the server's own internal traffic are in them only as the client sees them).
  [ -n "${bus[$k]:-}" ] && printf '  %5.1f NATS msgs/msg' "$(echo "${bus[$k]} / $msgs" | bc -l)"
  printf '\n'
done
