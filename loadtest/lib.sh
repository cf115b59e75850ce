# shellcheck shell=bash
# Shell helpers shared by loadtest/run.sh and loadtest/smoke.sh (sourced, not run):
# free ports, bounded waits, and starting and stopping the processes they own, by pid.

# A TCP port on 127.0.0.1 that nobody listens on, below the kernel's ephemeral range so
# that none of the generator's client sockets can be holding it. Ports given as arguments
# are skipped (the ones already picked for this run).
free_port() {
  local low port tries
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  ((low > 11000)) || low=30000
  for ((tries = 0; tries < 200; tries++)); do
    port=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
    [[ " $* " == *" $port "* ]] && continue
    if ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "no free port found below $low" >&2
  return 1
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 100 ms until it succeeds; fails
# with a message naming WHAT when SECONDS pass first.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}

# listening PORT: something accepts TCP connections on 127.0.0.1:PORT.
listening() {
  (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# http_ok PORT PATH: GET answers 200 (bash's /dev/tcp; curl may not be installed).
http_ok() {
  local fd status
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&"$fd"
  read -r -t 2 _ status _ <&"$fd" || status=
  exec {fd}>&-
  [[ $status == 200 ]]
}

# redis_cmd PORT DIR: the command line that starts a daemonized, persistence-free
# redis-server writing its pid, log and nothing else into DIR. It is also what
# herald-loadtest's outage scenario runs to bring Redis back, so both start it alike.
redis_cmd() {
  printf "redis-server --bind 127.0.0.1 --port %s --save '' --appendonly no --daemonize yes --dir %q --pidfile %q --logfile %q" \
    "$1" "$2" "$2/redis.pid" "$2/redis.log"
}

# start_redis PORT DIR [PREFIX...]: runs redis_cmd (after PREFIX, e.g. taskset -c 1) and
# waits until it answers PING.
start_redis() {
  local port=$1 dir=$2
  shift 2
  rm -f "$dir/redis.pid"
  "$@" sh -c "$(redis_cmd "$port" "$dir")"
  wait_for 10 "redis-server on port $port" redis-cli -p "$port" ping
}

# stop_redis DIR: stops the redis-server whose pidfile is in DIR (after an outage run
# that is the one the scenario started again), if it is still a redis-server.
stop_redis() {
  local pid
  [[ -f $1/redis.pid ]] || return 0
  read -r pid <"$1/redis.pid" || return 0
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]]; then
    stop_pid "$pid"
  fi
  rm -f "$1/redis.pid"
}

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it if it is our child.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    # A child of ours that exited stays a zombie until reaped: that counts as gone.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# children PID: pids whose parent is PID (from /proc; pgrep may not be installed).
children() {
  local stat pid ppid
  for stat in /proc/[0-9]*/stat; do
    read -r pid _ _ ppid _ <"$stat" 2>/dev/null || continue
    [[ $ppid == "$1" ]] && echo "$pid"
  done
  return 0
}

# raise_nofile: the soft open-files limit up to the hard one, for this shell and what it
# starts (each client is a socket). Not in a $(...) subshell: the limit would stay there.
raise_nofile() {
  local hard
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=1048576
  ulimit -n "$hard" 2>/dev/null || true
}

# cluster_ports N: N distinct free ports, on one line, for the nodes of a cluster.
cluster_ports() {
  local ports=()
  while ((${#ports[@]} < $1)); do
    ports+=("$(free_port "${ports[@]}")") || return 1
  done
  echo "${ports[*]}"
}

# cluster_node_cmd PORT BUS_PORT DIR: redis_cmd for one node of a Redis Cluster: cluster
# mode on, its nodes.conf in DIR, its cluster bus on BUS_PORT. Redis's default bus port,
# PORT + 10000, can fall in the kernel's ephemeral range, where a client socket of an
# earlier run held it once (bind: Address already in use); free_port's are below it.
cluster_node_cmd() {
  printf '%s --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port %s' \
    "$(redis_cmd "$1" "$3")" "$2"
}

# cluster_ok PORT...: every node says cluster_state:ok, and the first knows all the others.
cluster_ok() {
  local port
  for port in "$@"; do
    [[ $(redis-cli -p "$port" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return 1
  done
  (($(redis-cli -p "$1" cluster nodes 2>/dev/null | grep -c master) == $#))
}

# start_cluster DIR PORT... [-- PREFIX...]: one cluster-enabled redis-server per PORT, each
# in DIR/node-PORT with its bus on another free port, started after PREFIX (e.g. taskset
# -c 1); joins them with `redis-cli --cluster create` as masters without replicas (slots
# split evenly) and waits until every node reports cluster_state:ok. Stop it with
# stop_cluster DIR.
start_cluster() {
  local dir=$1 ports=() port
  shift
  while (($#)) && [[ $1 != -- ]]; do ports+=("$1"); shift; done
  (($#)) && shift
  local taken=("${ports[@]}") bus
  for port in "${ports[@]}"; do
    bus=$(free_port "${taken[@]}") || return 1
    taken+=("$bus")
    mkdir -p "$dir/node-$port"
    rm -f "$dir/node-$port/redis.pid"
    "$@" sh -c "$(cluster_node_cmd "$port" "$bus" "$dir/node-$port")"
  done
  for port in "${ports[@]}"; do
    wait_for 10 "redis-server on port $port" redis-cli -p "$port" ping || return 1
  done
  local addrs=()
  for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
    >"$dir/cluster-create.log" 2>&1 || { cat "$dir/cluster-create.log" >&2; return 1; }
  wait_for 30 "Redis Cluster on ports ${ports[*]}" cluster_ok "${ports[@]}"
}

# stop_cluster DIR: stops every node start_cluster started in DIR.
stop_cluster() {
  local node
  for node in "$1"/node-*; do
    [[ -d $node ]] && stop_redis "$node"
  done
  return 0
}
