#!/usr/bin/env bash
# Install what the proxy benchmark (benchmarks/sidecar_proxy.py) drives and compares against:
#
#   hack/install-bench-tools.sh     # idempotent; needs root (or sudo) only if wrk is missing
#
# * wrk (Debian package): the HTTP load generator, with a Lua script for POST bodies. Without
#   it the benchmark falls back to its own aiohttp load generator (slower, noted in results).
# * benchmarks/portkey/node_modules: Portkey's open-source gateway (npm @portkey-ai/gateway,
#   pinned in benchmarks/portkey/package-lock.json) via `npm ci`. Needs node >= 18 and npm.
#   node_modules is not committed (.gitignore: benchmarks/portkey/node_modules/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORTKEY="$ROOT/benchmarks/portkey"

if command -v wrk >/dev/null 2>&1; then
  echo "bench-tools: wrk present ($(command -v wrk))"
else
  echo "bench-tools: installing wrk (apt)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-tools: $tool is required for the Portkey comparison" >&2; exit 1; }
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
  echo "bench-tools: node >= 18 required (have $(node --version))" >&2
  exit 1
fi

stamp="$PORTKEY/node_modules/.aiguard-lock-sha"
want="$(sha256sum "$PORTKEY/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$PORTKEY/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  echo "bench-tools: Portkey gateway present ($PORTKEY/node_modules)"
else
  echo "bench-tools: npm ci in $PORTKEY"
  (cd "$PORTKEY" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
echo "bench-tools: done"
