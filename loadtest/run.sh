#!/usr/bin/env bash
# The benchmark: every herald-loadtest scenario against Herald, against herald-reference
# and against Nchan, side by side on the same machine, RUNS times each; the medians go into
# docs/benchmarks.md with the date, machine, command and versions, and a plot into
# docs/benchmarks.svg. The raw report of every run stays in docs/benchmarks/raw/ so each
# median can be checked.
#
# herald-reference (loadtest/src/reference/, built with herald-loadtest) is the practical
# limit of issue 14: one thread, epoll, one writev per client per Redis batch, Herald's
# wire subset the generator uses, no loss, a bounded queue per client. The page divides
# Herald by it (same run, same core) beside Herald by Nchan, and judges issue 14's ratio
# targets in a table of their own. It serves fanout, saturate, channels, idle and connect
# with Herald's arguments; it has no history, resume or server API and stops when Redis
# goes, so fanout_history, resume, api_publish and outage are Herald only.
#
#   loadtest/run.sh                     # the full benchmark: three peers, 3 runs (~30-35 min)
#   loadtest/run.sh --quick             # small N, 1-2 s windows, 1 run: tries it out (~1 min)
#   loadtest/run.sh --peers herald --scenarios fanout,idle --runs 1 --out /tmp/bench
#   loadtest/run.sh --redis cluster     # Herald on a 3-master Redis Cluster, beside the above
#
# Options:
#   --peers LIST       herald,reference,nchan (default all three)
#   --scenarios LIST   fanout,fanout_history,saturate,channels,idle,connect,outage,resume,
#                      api_publish (default all; fanout_history, outage, resume and
#                      api_publish are Herald only: Nchan and herald-reference have no
#                      history channels, no resume from an offset and no Herald server API)
#   --runs N           runs per peer and scenario (default 3; 1 with --quick)
#   --quick            small N and short windows; the page says so and judges no target
#   --out DIR          where benchmarks.md, benchmarks.svg and benchmarks/raw/ go (docs)
#   --redis KIND       single (default): one redis-server per run; cluster: a Redis Cluster
#                      of 3 masters without replicas per run, Herald on its
#                      redis+cluster:// URL, publications by SPUBLISH (FCALL for
#                      fanout_history) to each channel's master. Herald only (Nchan and
#                      herald-reference are skipped); fanout,fanout_history,saturate,channels,idle,connect
#                      (their default), not outage, resume or api_publish (they need one
#                      redis-server). Its runs are kept as herald_cluster-* beside the
#                      single-Redis runs in the same raw directory (each mode replaces only
#                      its own), and the page shows them in a column of their own.
#
# HERALD_BIN=path runs that herald binary instead of this tree's (an earlier build, for
# an interleaved before/after comparison with the same load generator).
#
# Installs redis-server, nginx-light and libnginx-mod-nchan with apt-get when missing.
# The server under test runs alone on core 0; herald-loadtest (coordinator, publisher and
# worker processes) and redis-server share core 1. Each run gets a fresh redis-server and
# server on new ports (a cluster: 3 fresh nodes, also on core 1); everything the script
# starts is stopped by pid, also on Ctrl-C.
# Logs of the last invocation: target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/lib.sh

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

all_scenarios=fanout,fanout_history,saturate,channels,idle,connect,outage,resume,api_publish
# On a Redis Cluster: the scenarios herald-loadtest runs there (outage restarts one
# redis-server, resume reads its INFO commandstats, api_publish PUBLISHes to it).
cluster_scenarios=fanout,fanout_history,saturate,channels,idle,connect
command_line="loadtest/run.sh${*:+ $*}"
peers=herald,reference,nchan scenarios='' runs='' quick=0 out=docs redis=single
while (($#)); do
  case $1 in
    --peers) peers=${2:?--peers needs a list}; shift 2 ;;
    --scenarios) scenarios=${2:?--scenarios needs a list}; shift 2 ;;
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --redis) redis=${2:?--redis needs single or cluster}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 64 ;;
  esac
done
[[ $redis == single || $redis == cluster ]] ||
  { echo "run.sh: --redis is single or cluster, not $redis" >&2; exit 64; }
cluster=0
[[ $redis == cluster ]] && cluster=1
if ((cluster)); then
  scenarios=${scenarios:-$cluster_scenarios}
  # The cluster mode measures Herald on a Cluster; the others keep their single-Redis runs.
  [[ ,$peers, == *,nchan,* ]] && echo "run.sh: --redis cluster runs Herald only; Nchan skipped" >&2
  [[ ,$peers, == *,reference,* ]] &&
    echo "run.sh: --redis cluster runs Herald only; herald-reference skipped" >&2
  peers=herald
fi
scenarios=${scenarios:-$all_scenarios}
runs=${runs:-$((quick ? 1 : 3))}
IFS=, read -ra peers <<<"$peers"
IFS=, read -ra scenarios <<<"$scenarios"
for peer in "${peers[@]}"; do
  [[ $peer == herald || $peer == reference || $peer == nchan ]] || { echo "run.sh: unknown peer $peer" >&2; exit 64; }
done
for scenario in "${scenarios[@]}"; do
  [[ ,$all_scenarios, == *",$scenario,"* ]] || { echo "run.sh: unknown scenario $scenario" >&2; exit 64; }
  if ((cluster)) && [[ ,$cluster_scenarios, != *",$scenario,"* ]]; then
    echo "run.sh: $scenario needs a single redis-server; --redis cluster runs $cluster_scenarios" >&2
    exit 64
  fi
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --runs must be a positive number" >&2; exit 64; }
wants_nchan=0
[[ " ${peers[*]} " == *" nchan "* ]] && wants_nchan=1

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# --- Packages -------------------------------------------------------------------------
nginx=$(command -v nginx || echo /usr/sbin/nginx)
nchan_module=/usr/lib/nginx/modules/ngx_nchan_module.so
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# redis-cli --cluster create joins the nodes (redis-tools, a dependency of redis-server).
((cluster)) && { command -v redis-cli >/dev/null || missing+=(redis-tools); }
if ((wants_nchan)); then
  [[ -x $nginx ]] || missing+=(nginx-light)
  [[ -f $nchan_module ]] || missing+=(libnginx-mod-nchan)
fi
if ((${#missing[@]})); then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  log "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Build ----------------------------------------------------------------------------
# Taken before the runs: the runs rewrite the tracked reports, which would make any later
# look at the tree say "dirty". herald-reference is always this tree's (HERALD_BIN or not).
tree_version="$(git describe --always --dirty --tags 2>/dev/null || echo unknown) (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
herald_version=$tree_version
log "building Herald and herald-loadtest (release)"
cargo build --release --quiet -p herald -p herald-loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
[[ $bin == /* ]] || bin="$PWD/$bin"
herald_bin=${HERALD_BIN:-$bin/herald}
[[ -n ${HERALD_BIN:-} ]] && herald_version="$("$herald_bin" --version) at $HERALD_BIN"

# --- Limits and parameters ------------------------------------------------------------
raise_nofile
nofile=$(ulimit -n)
# The issue's idle N is 20,000, but the server needs a descriptor per client plus ~13 of
# its own (Herald caps connections 64 below its limit): where the hard limit is 20,000
# per process, 19,900 is what one server holds.
idle_clients=$((nofile >= 20100 ? 20000 : nofile - 100))

# scenario_args SCENARIO: the scenario's flags, as the issue states them (or --quick).
scenario_args() {
  if ((quick)); then
    case $1 in
      fanout) echo --clients 500 --rates 20,200 --duration 2s ;;
      fanout_history) echo --clients 500 --rates 20,200 --duration 2s --publish fcall ;;
      resume) echo --clients 500 --rate 200 --warmup 2s --spread 1s ;;
      saturate) echo --clients 200 --start-rate 100 --step-factor 1.5 --step-duration 1s --max-steps 6 --p99-limit 100ms --refine 1 --retries 1 ;;
      channels) echo --clients 500 --own-rate 200 --shared-rate 5 --duration 2s ;;
      idle) echo --clients 2000 --hold 2s ;;
      connect) echo --clients 1000 --connect-concurrency 500 ;;
      outage) echo --clients 500 --channels 200 --down-for 500ms ;;
      api_publish) echo --connections 16 --subscribers 4 --duration 2s ;;
    esac
  else
    case $1 in
      fanout) echo --clients 5000 --rates 20,200 --duration 10s ;;
      # fanout again, on a history channel, every publication through FCALL herald_publish.
      fanout_history) echo --clients 5000 --rates 20,200 --duration 10s --publish fcall ;;
      # Every client drops and comes back with `since` within one second, at 200/s.
      resume) echo --clients 5000 --rate 200 --warmup 5s --spread 1s ;;
      # Steps of ×1.25 from 10/s (20,000 deliveries/s), so Nchan's far lower limit is found
      # too (a first step that fails measures nothing: at 100/s Nchan failed step 1 in a
      # trial); ~23 steps to 3.5M/s. Then 3 bisecting steps narrow the answer to ~3%.
      # A step failed on p99 alone is measured once more: in a trial one run stopped at
      # 1.1M deliveries/s on a 104 ms p99 after another had passed 2.2M at 69 ms.
      saturate) echo --clients 2000 --start-rate 10 --step-factor 1.25 --step-duration 5s --max-steps 40 --p99-limit 100ms --refine 3 --retries 1 ;;
      channels) echo --clients 5000 --own-rate 2000 --shared-rate 5 --duration 10s ;;
      idle) echo --clients "$idle_clients" --hold 10s ;;
      connect) echo --clients 10000 --connect-concurrency 500 ;;
      outage) echo --clients 5000 --channels 2000 --down-for 1s ;;
      # Issue 11's target is stated at C=16; 10 s per leg (four legs: API and Redis,
      # plain and history), 100-byte payloads, 4 subscribers taking every channel.
      api_publish) echo --connections 16 --subscribers 4 --duration 10s --payload-bytes 100 ;;
    esac
  fi
}
# A scenario that overran this much is stopped (each already has its own deadlines).
run_limit=$((quick ? 300 : 1800))
herald_flags=(--heartbeat 300s --max-connections-per-ip 0)
# History on the clients' channels (lt.0, ...), for the scenarios that need it only: the
# others measure Herald as it runs without history. 1,000 publications cover 5 s at 200/s.
history_rule='lt.*=1000/5m'
history_flags=(--history "$history_rule")
has_history() { [[ $1 == fanout_history || $1 == resume ]]; }
# api_publish: the server API on, and history on its history legs' channels (hist.0, ...)
# only, so its plain legs stay plain. The key only guards a loopback listener for one run.
api_key=herald-loadtest
api_history_rule='hist.*=1000/5m'
api_flags=(--api-key "$api_key" --history "$api_history_rule")
# subcommand SCENARIO: the herald-loadtest scenario a benchmark scenario runs.
subcommand() { [[ $1 == fanout_history ]] && echo fanout || echo "$1"; }

# --- Processes this script owns, stopped on exit ---------------------------------------
work="$PWD/target/bench"
rm -rf "$work"
mkdir -p "$work"
server_pid='' generator_pid='' redis_dir='' cluster_dir=''
stop_all() {
  [[ -n $generator_pid ]] && stop_pid "$generator_pid"
  [[ -n $server_pid ]] && stop_pid "$server_pid"
  [[ -n $redis_dir ]] && stop_redis "$redis_dir"
  [[ -n $cluster_dir ]] && stop_cluster "$cluster_dir"
  generator_pid='' server_pid='' redis_dir='' cluster_dir=''
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start_herald PORT REDIS_URL DIR [FLAGS...]: sets server_pid, and measured_pid (the same).
start_herald() {
  taskset -c 0 "$herald_bin" --listen "127.0.0.1:$1" --redis-url "$2" \
    "${herald_flags[@]}" "${@:4}" >"$3/herald.log" 2>&1 &
  server_pid=$! measured_pid=$!
  wait_for 30 "Herald ready on port $1" http_ok "$1" /readyz
}

has_children() { [[ -n $(children "$1") ]]; }

# start_reference PORT REDIS_URL DIR: herald-reference, one thread; server_pid and
# measured_pid are its pid. It connects to Redis before it listens, so /readyz answering
# means ready. (It takes none of Herald's flags: no history, no API, no pings to turn off.)
start_reference() {
  taskset -c 0 "$bin/herald-reference" --listen "127.0.0.1:$1" --redis "$2" \
    >"$3/reference.log" 2>&1 &
  server_pid=$! measured_pid=$!
  wait_for 30 "herald-reference ready on port $1" http_ok "$1" /readyz
}

# start_nchan PORT REDIS_URL DIR: nginx's master is server_pid; its one worker, which
# serves every connection, is measured_pid.
start_nchan() {
  local user=
  ((EUID == 0)) && user="user root;"
  mkdir -p "$3/client_body"
  sed -e "s#@PREFIX@#$3#g; s#@PORT@#$1#g; s#@REDIS_URL@#$2#g" \
    -e "s#@NCHAN_MODULE@#$nchan_module#g; s#@USER@#$user#g; s#@NOFILE@#$nofile#g" \
    -e "s#@WORKER_CONNECTIONS@#$((nofile * 9 / 8))#g" \
    loadtest/nchan/nginx.conf.in >"$3/nginx.conf"
  taskset -c 0 "$nginx" -p "$3" -c "$3/nginx.conf" -e "$3/error.log" >"$3/nginx.out" 2>&1 &
  server_pid=$!
  wait_for 30 "nginx listening on port $1" listening "$1"
  wait_for 10 "nginx's worker process" has_children "$server_pid"
  measured_pid=$(children "$server_pid")
  [[ $measured_pid =~ ^[0-9]+$ ]] || { echo "expected one nginx worker, found: $measured_pid" >&2; return 1; }
}

raw="$out/benchmarks/raw"
mkdir -p "$raw"
# Each mode replaces its own runs only, so a cluster run's column sits beside the
# single-Redis runs of the same directory (and the other way round).
if ((cluster)); then
  rm -f "$raw"/herald_cluster-*.json "$raw"/herald_cluster-*.failed "$raw/meta-cluster.txt"
else
  rm -f "$raw"/herald-*.json "$raw"/reference-*.json "$raw"/nchan-*.json \
    "$raw"/herald-*.failed "$raw"/reference-*.failed "$raw"/nchan-*.failed "$raw/meta.txt"
fi
failures=()
generator_args=()

# run_one PEER SCENARIO RUN: one measurement with a fresh Redis (or Redis Cluster) and
# server.
run_one() {
  local peer=$1 scenario=$2 run=$3
  local name="$peer-$scenario-$run"
  ((cluster)) && name="${peer}_cluster-$scenario-$run"
  local dir="$work/$name"
  mkdir -p "$dir"
  local redis_port server_port redis_url status=0
  if ((cluster)); then
    local ports=() hosts=() port
    read -ra ports <<<"$(cluster_ports 3)"
    ((${#ports[@]} == 3)) || { log "$name: no free ports for the cluster"; return 1; }
    cluster_dir=$dir/cluster
    start_cluster "$cluster_dir" "${ports[@]}" -- taskset -c 1
    # Picked once the nodes and their cluster buses listen, so it is none of theirs.
    server_port=$(free_port "${ports[@]}")
    for port in "${ports[@]}"; do hosts+=("127.0.0.1:$port"); done
    redis_url="redis+cluster://$(IFS=,; echo "${hosts[*]}")"
  else
    redis_port=$(free_port)
    server_port=$(free_port "$redis_port")
    redis_dir=$dir
    start_redis "$redis_port" "$dir" taskset -c 1
    redis_url="redis://127.0.0.1:$redis_port"
  fi
  local extra=()
  has_history "$scenario" && extra=("${history_flags[@]}")
  [[ $scenario == api_publish ]] && extra=("${api_flags[@]}")
  "start_$peer" "$server_port" "$redis_url" "$dir" "${extra[@]}"
  local args
  read -ra args <<<"$(scenario_args "$scenario")"
  local command
  command=$(subcommand "$scenario")
  generator_args+=("$scenario|$command ${args[*]}")
  if [[ $peer == herald || $peer == reference ]]; then
    # herald-reference speaks Herald's wire subset: the same flags, its own /ws.
    args+=(--target "ws://127.0.0.1:$server_port/ws")
  else
    args+=(--peer nchan --target "ws://127.0.0.1:$server_port/sub/{channel}"
      --nchan-pub "http://127.0.0.1:$server_port/pub/{channel}")
  fi
  args+=(--redis "$redis_url" --server-pid "$measured_pid" --json)
  [[ $scenario == api_publish ]] && args+=(--api-key "$api_key")
  [[ $scenario == outage ]] &&
    args+=(--redis-start-cmd "taskset -c 1 $(redis_cmd "$redis_port" "$dir")")
  log "$name: herald-loadtest $command ${args[*]}"
  taskset -c 1 timeout --kill-after=10 "$run_limit" "$bin/herald-loadtest" "$command" "${args[@]}" \
    >"$dir/report.json" 2>"$dir/loadtest.log" &
  generator_pid=$!
  wait "$generator_pid" || status=$?
  generator_pid=
  stop_all
  # 0: clean; 3: measured but not clean (kept: the page counts clean runs); else nothing.
  if ((status == 0 || status == 3)) && [[ -s $dir/report.json ]]; then
    cp "$dir/report.json" "$raw/$name.json"
    "$bin/herald-loadtest" summary "$raw/$name.json" >&2 || true
  else
    { echo "herald-loadtest exited with status $status"; tail -n 20 "$dir/loadtest.log"; } \
      >"$raw/$name.failed"
    failures+=("$name")
    log "$name: measured nothing (status $status); see $dir/loadtest.log"
  fi
}

meta_file=meta.txt
((cluster)) && meta_file=meta-cluster.txt
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%s)
for scenario in "${scenarios[@]}"; do
  for peer in "${peers[@]}"; do
    if [[ $peer == nchan && $scenario == outage ]]; then
      log "outage: Herald only (it watches Herald's own Redis subscriptions); skipped for Nchan"
      continue
    fi
    if [[ $peer == nchan ]] && has_history "$scenario"; then
      log "$scenario: Herald only (Nchan has no history channels or resume from an offset); skipped for Nchan"
      continue
    fi
    if [[ $peer == nchan && $scenario == api_publish ]]; then
      log "api_publish: Herald only (it measures Herald's server API); skipped for Nchan"
      continue
    fi
    if [[ $peer == reference ]] &&
      { [[ $scenario == outage || $scenario == api_publish ]] || has_history "$scenario"; }; then
      log "$scenario: Herald only (herald-reference has no history, resume, server API or Redis reconnection); skipped for herald-reference"
      continue
    fi
    for ((run = 1; run <= runs; run++)); do
      run_one "$peer" "$scenario" "$run"
    done
  done
done
finished=$(date -u +%s)

# --- What ran where --------------------------------------------------------------------
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
cpu=${cpu:-$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)}
hypervisor=$(lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor:[[:space:]]*//p' | head -n 1)
mem_gib=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
package_of() { dpkg-query -W -f '${Package} ${Version}' "$@" 2>/dev/null || echo "not from a Debian package"; }
{
  echo "Date (UTC): $(date -u -d "@$started" '+%Y-%m-%d %H:%M') to $(date -u -d "@$finished" '+%H:%M') ($(((finished - started + 59) / 60)) min)"
  if ((quick)); then
    echo "Mode: quick (small N, 1-2 s windows: for trying the runner out, not for numbers)"
  else
    echo "Mode: full"
  fi
  echo "Command: \`$command_line\`"
  if ((cluster)); then
    echo "Redis topology: Redis Cluster, 3 masters without replicas (\`redis-cli --cluster create --cluster-replicas 0\`), fresh for every run; Herald SSUBSCRIBEs each channel on its master, herald-loadtest SPUBLISHes there (FCALL herald_publish for fanout_history)"
    echo "Runs: $runs per scenario, Herald only, each with a fresh Redis Cluster and server"
  else
    echo "Runs: $runs per peer and scenario, each with a fresh redis-server and server"
  fi
  echo "Machine: $cpu, $(nproc) cores, $mem_gib GiB memory, Linux $(uname -r)${hypervisor:+, $hypervisor guest}"
  echo "Open files (hard limit): $(ulimit -Hn) per process"
  echo "Load average before the run: $load_before"
  if ((cluster)); then
    echo "Pinning: server under test \`taskset -c 0\`; herald-loadtest (coordinator, publisher, workers) and the 3 redis-server nodes \`taskset -c 1\`"
    echo "Herald flags: \`--listen 127.0.0.1:PORT --redis-url redis+cluster://127.0.0.1:PORT1,127.0.0.1:PORT2,127.0.0.1:PORT3 ${herald_flags[*]}\`; for fanout_history also \`--history '$history_rule'\`"
  else
    echo "Pinning: server under test \`taskset -c 0\`; herald-loadtest (coordinator, publisher, workers) and redis-server \`taskset -c 1\`"
  fi
  echo "Herald: $herald_version"
  if [[ " ${peers[*]} " == *" reference "* ]]; then
    echo "herald-reference: $tree_version, this tree's loadtest/src/reference/ (release build): the one-thread reference server of issue 14 (mio epoll, one writev per client per Redis batch, Herald's wire subset, bounded per-client queue), no flags but \`--listen 127.0.0.1:PORT --redis redis://127.0.0.1:PORT\`"
  fi
  ((cluster)) || echo "Herald flags: \`--listen 127.0.0.1:PORT --redis-url redis://127.0.0.1:PORT ${herald_flags[*]}\`; for fanout_history and resume also \`--history '$history_rule'\`; for api_publish \`--api-key KEY --history '$api_history_rule'\`"
  echo "Rust: $(rustc --version)"
  echo "herald-loadtest: $("$bin/herald-loadtest" --version)"
  echo "Redis: $(redis-server --version | sed 's/ sha=.*//')"
  if ((wants_nchan)); then
    echo "nginx: $("$nginx" -v 2>&1 | sed 's/^nginx version: //') ($(package_of "$(dpkg -S "$(readlink -f "$nginx")" 2>/dev/null | cut -d: -f1 || echo nginx)"))"
    echo "Nchan: $(package_of libnginx-mod-nchan), configuration \`loadtest/nchan/nginx.conf.in\`"
  fi
  for args in "${generator_args[@]}"; do
    echo "${args%%|*} arguments: \`herald-loadtest ${args#*|}\`"
  done | sort -u
} >"$raw/$meta_file"

"$bin/herald-loadtest" table --raw "$raw" --markdown "$out/benchmarks.md" --svg "$out/benchmarks.svg"
log "wrote $out/benchmarks.md and $out/benchmarks.svg ($(((finished - started + 59) / 60)) min of runs; logs in $work)"
if ((${#failures[@]})); then
  log "runs that measured nothing: ${failures[*]}"
  exit 1
fi
