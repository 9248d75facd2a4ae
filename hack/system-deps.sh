#!/usr/bin/env bash
# Install the system services the tests run for real (Debian packages), only if missing.
#
#   hack/system-deps.sh        # = make system-deps; needs root (or sudo) the first time
#
# redis-server: shared rate limits across sidecars. postgresql: the collector's scale store. prometheus + promtool: scrape tests and
# rule unit tests. Go (for the control plane build) and Python 3.11 must already be present.
set -euo pipefail

declare -A PKG_FOR=(
  [redis-server]=redis-server
  [prometheus]=prometheus
  [promtool]=prometheus
  [chromium]=chromium  # headless screenshots of the evidence bundle's index.html
)
# PostgreSQL's server binaries are not on PATH: look for Debian's initdb.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || PKG_FOR[initdb]=postgresql
missing=()
for cmd in "${!PKG_FOR[@]}"; do
  if [ "$cmd" = initdb ]; then missing+=(postgresql); continue; fi
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
for tool in go python3.11; do
  command -v "$tool" >/dev/null 2>&1 || { echo "system-deps: $tool is required and not installed" >&2; exit 1; }
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system-deps: all present"
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "system-deps: installing ${pkgs[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# The Debian packages enable their services; tests start their own instances on free ports.
for svc in redis-server prometheus postgresql; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
done
echo "system-deps: done"
