#!/usr/bin/env bash
# One command for the JavaScript client: installs what is missing (npm modules from the
# lock file, Debian's chromium, redis-server), then typecheck, lint and every test (Node
# tests against a real Herald and redis-server, and the browser test).
#
# Needs Herald's binary: target/debug/herald at the repository root (build it first), or
# HERALD_BIN. Output (the browser screenshot) goes to clients/js/test-output/.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v node >/dev/null || missing+=(nodejs npm)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "test.sh: Node 20+ needed, found $(node --version)" >&2; exit 1; }

# npm ci only when node_modules was not installed from this very lock file.
if ! cmp -s package-lock.json node_modules/.installed-from-lock 2>/dev/null; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.installed-from-lock
fi

HERALD_BIN=${HERALD_BIN:-$(cd ../.. && pwd)/target/debug/herald}
[ -x "$HERALD_BIN" ] || { echo "test.sh: no Herald binary at $HERALD_BIN (cargo build first, or set HERALD_BIN)" >&2; exit 1; }
export HERALD_BIN

npm run --silent typecheck
npm run --silent lint
npm test
