#!/usr/bin/env bash
# A small cluster on one machine: 1 route, 2 gateways, 2 api, 2 push processes on the
# local PostgreSQL, Redis and NATS (scripts/engines.sh starts those). Ctrl-C stops all.
#   deploy/local/start.sh            (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/engines.sh postgres redis nats
bin=target/release/xinge
cfg=deploy/local/cluster.toml
trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT INT TERM
$bin route   --config $cfg --node-id 1  --http-addr 127.0.0.1:8000 &
$bin gateway --config $cfg --node-id 10 --http-addr 127.0.0.1:8081 --tcp-addr 127.0.0.1:8091 &
$bin gateway --config $cfg --node-id 11 --http-addr 127.0.0.1:8082 --tcp-addr 127.0.0.1:8092 &
$bin api     --config $cfg --node-id 20 --http-addr 127.0.0.1:8080 &
$bin api     --config $cfg --node-id 21 --http-addr 127.0.0.1:8079 &
$bin push    --config $cfg --node-id 30 --http-addr 127.0.0.1:8071 &
$bin push    --config $cfg --node-id 31 --http-addr 127.0.0.1:8072 &
wait
