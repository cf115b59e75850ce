#!/usr/bin/env bash
# Runs Herald on this machine against a local Redis, starting (and if need be installing)
# redis-server when none answers on 127.0.0.1:6379. Extra arguments go to herald.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    echo "redis-server is missing; installing the Debian package" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server
  fi
  echo "starting redis-server on 127.0.0.1:6379" >&2
  redis-server --port 6379 --bind 127.0.0.1 --daemonize yes --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

exec cargo run --release --bin herald -- "$@"
