#!/usr/bin/env bash
# CI smoke run of the load generator: every herald-loadtest scenario once against a debug
# build of Herald, with 50 clients and 1 s windows, so the instrument cannot rot unnoticed.
# Prints one line per scenario; exits non-zero if a scenario could not measure, reports
# not clean, or lost a delivery. Herald only (the Nchan side needs nginx: see run.sh).
# Herald keeps history on the `hist.*` channels (contract 1.1), which only the history
# runs use: fanout through FCALL herald_publish, resume, and api_publish's history legs.
# Its server API is on (--api-key) for api_publish.
# Then fanout, channels and fanout through FCALL once more against a second Herald on a
# 3-master Redis Cluster (`--redis redis+cluster://...`: SPUBLISH, or FCALL, to each
# channel's master), ~8 s more.
# Last, fanout and channels against herald-reference (the one-thread limit Herald is
# measured against, issue 14) on a fresh Redis, ~5 s more.
#
#   loadtest/smoke.sh          # ~40 s after the build
#
# Redis, the cluster's nodes and both Heralds run on free ports in a temporary directory;
# all are stopped by pid on exit, and every scenario is bounded by its own deadline and by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/lib.sh

cargo build --quiet -p herald -p herald-loadtest
# (herald-loadtest's package builds both of its binaries: the generator and herald-reference.)
bin="${CARGO_TARGET_DIR:-target}/debug"
command -v redis-server >/dev/null || {
  echo "smoke.sh: redis-server is not installed (apt-get install redis-server)" >&2
  exit 1
}
command -v redis-cli >/dev/null || {
  echo "smoke.sh: redis-cli is not installed (apt-get install redis-tools); the cluster runs need it" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/herald-smoke.XXXXXX")
herald_pid= cluster_herald_pid= reference_pid=
cleanup() {
  local status=$?
  [[ -n $herald_pid ]] && stop_pid "$herald_pid"
  [[ -n $cluster_herald_pid ]] && stop_pid "$cluster_herald_pid"
  [[ -n $reference_pid ]] && stop_pid "$reference_pid"
  stop_redis "$work"
  stop_cluster "$work/cluster"
  if ((status != 0)); then
    echo "smoke.sh: failed; Herald's log:" >&2
    tail -n 20 "$work/herald.log" >&2 || true
    if [[ -f $work/herald-cluster.log ]]; then
      echo "smoke.sh: the Redis Cluster Herald's log:" >&2
      tail -n 20 "$work/herald-cluster.log" >&2 || true
    fi
    if [[ -f $work/reference.log ]]; then
      echo "smoke.sh: herald-reference's log:" >&2
      tail -n 20 "$work/reference.log" >&2 || true
    fi
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
raise_nofile

redis_port=$(free_port)
herald_port=$(free_port "$redis_port")
start_redis "$redis_port" "$work"
# --heartbeat 300s keeps server pings out of the measurement; --max-connections-per-ip 0
# because every client comes from 127.0.0.1 (the same flags as the benchmark). History
# on hist.* only: the other scenarios' lt.* channels stay plain.
api_key=herald-smoke
"$bin/herald" --listen "127.0.0.1:$herald_port" --redis-url "redis://127.0.0.1:$redis_port" \
  --heartbeat 300s --max-connections-per-ip 0 --history 'hist.*=1000/5m' --log warn \
  --api-key "$api_key" \
  >"$work/herald.log" 2>&1 &
herald_pid=$!
wait_for 20 "Herald to be ready on port $herald_port" http_ok "$herald_port" /readyz

common=(--target "ws://127.0.0.1:$herald_port/ws" --redis "redis://127.0.0.1:$redis_port"
  --server-pid "$herald_pid" --json)
failed=()
# smoke [--as NAME] SCENARIO FLAGS...: one run; NAME (default SCENARIO) names its files.
smoke() {
  local name=$1 status=0
  [[ $name == --as ]] && { name=$2; shift 2; }
  local scenario=$1
  shift
  timeout --kill-after=5 60 "$bin/herald-loadtest" "$scenario" "${common[@]}" "$@" \
    >"$work/$name.json" 2>"$work/$name.log" || status=$?
  # 0: clean; 3: measured but not clean (summary --strict says why); else: no measurement.
  if ((status != 0 && status != 3)); then
    echo "$name: herald-loadtest exited with $status:" >&2
    tail -n 5 "$work/$name.log" >&2
    failed+=("$name")
  elif ! "$bin/herald-loadtest" summary --strict "$work/$name.json"; then
    failed+=("$name")
  fi
}

smoke fanout --clients 50 --rates 20,200 --duration 1s
smoke saturate --clients 50 --start-rate 50 --step-duration 1s --max-steps 2
smoke channels --clients 50 --own-rate 100 --duration 1s
smoke idle --clients 50 --hold 1s
smoke connect --clients 50
smoke --as fanout_history fanout --clients 50 --rates 20,200 --duration 1s \
  --publish fcall --channel-prefix hist.
smoke resume --clients 50 --rate 200 --warmup 1s --spread 200ms --tail 500ms \
  --channel-prefix hist.
smoke api_publish --api-key "$api_key" --connections 4 --subscribers 2 --duration 1s
# Last: it restarts Redis, which then holds no history and no function until Herald
# loads it again.
smoke outage --clients 50 --channels 20 --down-for 200ms \
  --redis-start-cmd "$(redis_cmd "$redis_port" "$work")"

stop_pid "$herald_pid"
herald_pid=
stop_redis "$work"

# The same tool on a Redis Cluster: 3 masters, no replicas, a Herald on its
# redis+cluster:// URL; the publisher SPUBLISHes on each channel's master.
read -ra ports <<<"$(cluster_ports 3)"
start_cluster "$work/cluster" "${ports[@]}"
cluster_url="redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
herald_port=$(free_port "${ports[@]}")
"$bin/herald" --listen "127.0.0.1:$herald_port" --redis-url "$cluster_url" \
  --heartbeat 300s --max-connections-per-ip 0 --history 'hist.*=1000/5m' --log warn \
  >"$work/herald-cluster.log" 2>&1 &
cluster_herald_pid=$!
wait_for 20 "Herald on the Redis Cluster to be ready on port $herald_port" http_ok "$herald_port" /readyz
common=(--target "ws://127.0.0.1:$herald_port/ws" --redis "$cluster_url"
  --server-pid "$cluster_herald_pid" --json)
smoke --as fanout_cluster fanout --clients 50 --rates 20,200 --duration 1s
# 50 own channels spread over the 3 masters, plus the shared one.
smoke --as channels_cluster channels --clients 50 --own-rate 100 --duration 1s
# FCALL herald_publish on the channel's master: Herald loaded the library on every master.
smoke --as fanout_history_cluster fanout --clients 50 --rates 20,200 --duration 1s \
  --publish fcall --channel-prefix hist.

stop_pid "$cluster_herald_pid"
cluster_herald_pid=
stop_cluster "$work/cluster"

# The reference server: the same generator, Herald's wire subset, one thread
# (src/reference/). Plain Redis only; it is ready once listening (it connects to Redis
# first), and /readyz says so.
redis_port=$(free_port)
reference_port=$(free_port "$redis_port")
start_redis "$redis_port" "$work"
"$bin/herald-reference" --listen "127.0.0.1:$reference_port" \
  --redis "redis://127.0.0.1:$redis_port" >"$work/reference.log" 2>&1 &
reference_pid=$!
wait_for 20 "herald-reference to be ready on port $reference_port" \
  http_ok "$reference_port" /readyz
common=(--target "ws://127.0.0.1:$reference_port/ws" --redis "redis://127.0.0.1:$redis_port"
  --server-pid "$reference_pid" --json)
smoke --as fanout_reference fanout --clients 50 --rates 20,200 --duration 1s
smoke --as channels_reference channels --clients 50 --own-rate 100 --duration 1s

if ((${#failed[@]})); then
  echo "smoke.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "smoke.sh: all fourteen runs clean"
