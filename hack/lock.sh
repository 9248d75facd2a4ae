#!/usr/bin/env bash
# Regenerate the hashed lockfiles the container images (and CI's install test) install from:
#
#   requirements/sidecar.txt       the `sidecar` extra           (Dockerfile.sidecar)
#   requirements/sidecar-ner.txt   the `sidecar` + `ner` extras  (Dockerfile.sidecar, NER=1)
#   requirements/operator.txt      the `operator` extra          (Dockerfile.operator)
#   requirements/build.txt         pyproject's [build-system] requires (setuptools, wheel): the
#                                  aiguard wheel itself is built without build isolation, so
#                                  no unhashed download happens at build time either
#
# Each is resolved by pip-compile (pip-tools, from the dev extra) from pyproject.toml with
# --generate-hashes, so `pip install --require-hashes` refuses any file that is not the one
# locked. Pins stay where they are unless pyproject.toml no longer allows them; upgrade with
#   hack/lock.sh --upgrade                 (everything)
#   hack/lock.sh --upgrade-package NAME    (one package, e.g. after a pip-audit finding)
# Needs PyPI. Usage: hack/lock.sh [pip-compile options...]   (`make lock` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
if ! "$PY" -m piptools compile --version >/dev/null 2>&1; then
  echo "hack/lock.sh: pip-tools is missing from $PY; run 'make setup' first" >&2
  exit 1
fi

# The header of each lockfile names the command that regenerates it.
export CUSTOM_COMPILE_COMMAND="make lock"
# Resolve from PyPI alone: a machine's local wheel folders must not leak into the lock.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL

compile() {  # compile OUTPUT PIP-COMPILE-OPTION...
  local out=$1
  shift
  echo "hack/lock.sh: $out <- pyproject.toml $*" >&2
  "$PY" -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    --resolver=backtracking "$@" --output-file "$out" "${LOCK_ARGS[@]}" pyproject.toml
}

LOCK_ARGS=("$@")
compile requirements/sidecar.txt --extra sidecar
compile requirements/sidecar-ner.txt --extra sidecar --extra ner
compile requirements/operator.txt --extra operator
compile requirements/build.txt --all-build-deps --only-build-deps
