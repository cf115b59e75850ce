#!/usr/bin/env bash
# Profiles one server under one herald-loadtest scenario, as docs/performance.md does: the
# server alone on core 0, Redis and the generator on core 1 (as in run.sh), and one of
#
#   (default)     the server's CPU per thread (user and system ticks of 10 ms) and its
#                 voluntary and involuntary context switches over the whole run, with the
#                 generator's summary line;
#   --callgrind   the server's user-space instructions per delivery under valgrind's
#                 callgrind: two runs of the scenario, 10 s and 30 s, and the difference
#                 of their instructions over the difference of their deliveries, so start-
#                 up and connecting cancel out. Steadier than time on a shared host, blind
#                 to the kernel (use the default mode for that). Keep the load small: the
#                 server runs ~50x slower under valgrind (e.g. channels --clients 500
#                 --own-rate 200 --shared-rate 5); the scenario must take --duration,
#                 which this mode sets (fanout, channels).
#
#   loadtest/profile.sh [--callgrind] [--server herald|reference] [--bin PATH] [--cores N]
#                       SCENARIO [ARGS...]
#   loadtest/profile.sh channels --clients 5000 --own-rate 2000 --shared-rate 5 --duration 10s
#   loadtest/profile.sh --server reference --callgrind channels --clients 500 --own-rate 200
#   loadtest/profile.sh --cores 2 fanout --clients 5000 --rates 200 --duration 10s
#
# --bin runs that server binary instead of this tree's release build (a before/after).
# --cores N gives the server cores 0..N-1 (Herald with N runtime workers) and runs Redis
# and the generator niced (10) on the same cores: how Herald uses more than one core.
# Writes into target/profile/ (the callgrind outputs stay there); needs valgrind for
# --callgrind. Every process it starts is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/lib.sh

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

server=herald bin='' callgrind=0 cores=1
while (($#)); do
  case $1 in
    --server) server=${2:?--server needs herald or reference}; shift 2 ;;
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --callgrind) callgrind=1; shift ;;
    --cores) cores=${2:?--cores needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "profile.sh: unknown option $1" >&2; usage >&2; exit 64 ;;
    *) break ;;
  esac
done
(($#)) || { usage >&2; exit 64; }
[[ $server == herald || $server == reference ]] ||
  { echo "profile.sh: --server is herald or reference, not $server" >&2; exit 64; }
[[ $cores =~ ^[1-9][0-9]*$ ]] && ((cores <= $(nproc))) ||
  { echo "profile.sh: --cores must be 1..$(nproc)" >&2; exit 64; }
if ((callgrind)) && ! command -v valgrind >/dev/null; then
  echo "profile.sh: --callgrind needs valgrind (apt-get install valgrind)" >&2
  exit 69
fi
scenario=$1
shift

cargo build --release --quiet -p herald -p herald-loadtest
release="${CARGO_TARGET_DIR:-target}/release"
generator=$release/herald-loadtest
if [[ -z $bin ]]; then
  bin=$release/herald
  [[ $server == reference ]] && bin=$release/herald-reference
fi

if ((cores == 1)); then
  server_cpus=0 others=(taskset -c 1)
else
  server_cpus=0-$((cores - 1)) others=(nice -n 10 taskset -c "0-$((cores - 1))")
fi

work="$PWD/target/profile"
mkdir -p "$work"
server_pid='' redis_dir=''
# stop_server: SIGTERM, then up to a minute for the server to end on its own (under
# valgrind, callgrind writes its output only then), then SIGKILL.
stop_server() {
  local i
  kill -TERM "$server_pid" 2>/dev/null || return 0
  for ((i = 0; i < 600; i++)); do
    [[ $(awk '{print $3}' "/proc/$server_pid/stat" 2>/dev/null || echo Z) == Z ]] && break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
stop_all() {
  [[ -n $server_pid ]] && stop_server
  [[ -n $redis_dir ]] && stop_redis "$redis_dir"
  server_pid='' redis_dir=''
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# threads PID: one line per thread name: user ticks, system ticks, voluntary and
# involuntary context switches (summed over threads of the same name).
threads() {
  local task
  for task in /proc/"$1"/task/*; do
    printf '%s %s %s\n' "$(tr ' ' _ <"$task/comm")" "$(cut -d' ' -f14,15 <"$task/stat")" \
      "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "$task/status")"
  done | awk '{u[$1] += $2; s[$1] += $3; v[$1] += $4; n[$1] += $5}
    END {for (k in u) print k, u[k], s[k], v[k], n[k]}' | sort
}

# run_once DIR ARGS...: one measurement; leaves DIR/report.json and, in the default mode,
# DIR/threads (the per-thread deltas).
run_once() {
  local dir=$1
  shift
  mkdir -p "$dir"
  local redis_port server_port
  redis_port=$(free_port)
  server_port=$(free_port "$redis_port")
  redis_dir=$dir
  start_redis "$redis_port" "$dir" "${others[@]}"
  local wrap=()
  ((callgrind)) && wrap=(valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out")
  if [[ $server == herald ]]; then
    taskset -c "$server_cpus" "${wrap[@]}" "$bin" --listen "127.0.0.1:$server_port" \
      --redis-url "redis://127.0.0.1:$redis_port" --heartbeat 300s \
      --max-connections-per-ip 0 --worker-threads "$cores" --log warn >"$dir/server.log" 2>&1 &
  else
    taskset -c "$server_cpus" "${wrap[@]}" "$bin" --listen "127.0.0.1:$server_port" \
      --redis "redis://127.0.0.1:$redis_port" >"$dir/server.log" 2>&1 &
  fi
  server_pid=$!
  wait_for 120 "the server on port $server_port" http_ok "$server_port" /readyz
  threads "$server_pid" >"$dir/before"
  "${others[@]}" "$generator" "$scenario" --target "ws://127.0.0.1:$server_port/ws" \
    --redis "redis://127.0.0.1:$redis_port" --server-pid "$server_pid" --json "$@" \
    >"$dir/report.json" 2>"$dir/loadtest.log" || echo "herald-loadtest exited with $?" >&2
  threads "$server_pid" >"$dir/after"
  join "$dir/before" "$dir/after" |
    awk '{printf "%-20s user %6d  sys %6d  voluntary %8d  involuntary %8d\n", $1, $6 - $2, $7 - $3, $8 - $4, $9 - $5}' \
      >"$dir/threads"
  stop_all
  "$generator" summary "$dir/report.json" || true
}

# deliveries DIR: publications received by all clients over the run's phases.
deliveries() {
  grep -o '"received":[0-9]*' "$1/report.json" | awk -F: '{n += $2} END {print n + 0}'
}

# instructions DIR: the server's instructions in all, from callgrind's output.
instructions() {
  awk '/^(summary|totals):/ {print $2; exit}' "$1/callgrind.out"
}

stamp=$(date -u +%H%M%S)
if ((callgrind)); then
  short="$work/$server-$scenario-$stamp-10s" long="$work/$server-$scenario-$stamp-30s"
  run_once "$short" "$@" --duration 10s
  run_once "$long" "$@" --duration 30s
  read -r i1 i2 d1 d2 < <(echo "$(instructions "$short") $(instructions "$long") \
    $(deliveries "$short") $(deliveries "$long")")
  ((d2 > d1)) || { echo "profile.sh: the long run delivered no more than the short one" >&2; exit 1; }
  echo "$server $scenario $*: $(((i2 - i1) / (d2 - d1))) instructions per delivery" \
    "(($i2 - $i1) / ($d2 - $d1)); callgrind outputs in $short and $long"
else
  dir="$work/$server-$scenario-$stamp"
  run_once "$dir" "$@"
  cat "$dir/threads"
  echo "(ticks of 10 ms over the whole run, connecting included; deliveries: $(deliveries "$dir"))"
fi
