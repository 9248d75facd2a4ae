#!/usr/bin/env bash
# Supply-chain checks of what the images ship (`make supply-chain`):
#
#  1. lockfiles: requirements/*.txt still satisfy pyproject.toml, every pin hashed
#     (tests/packaging/test_lockfiles.py, no network);
#  2. vulnerabilities: pip-audit over the hashed lockfiles (PyPI's vulnerability data);
#  3. licences: the sidecar (+NER) and operator venvs are installed exactly as the images install
#     them (hack/install-venv.sh) and pip-licenses reads every package's licence; GPL/AGPL and
#     unknown licences fail unless requirements/supply-chain.toml allows them with a reason.
#
# Policy and how to handle a finding: docs/supply-chain.md. Needs PyPI (wheels are cached in
# ~/.cache/aiguard/wheels, AIGUARD_WHEELHOUSE). STRICT=1 also fails on packages the
# vulnerability data could not cover. Usage: hack/supply-chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
for module in piptools pip_audit piplicenses; do
  if ! "$PY" -c "import $module" 2>/dev/null; then
    echo "hack/supply-chain.sh: $module is missing from $PY; run 'make setup' first" >&2
    exit 1
  fi
done
export AIGUARD_WHEELHOUSE=${AIGUARD_WHEELHOUSE:-$HOME/.cache/aiguard/wheels}
base_python=$("$PY" -c 'import sys; print(sys._base_executable)')

start=$SECONDS
status=0

echo "== lockfiles (tests/packaging/test_lockfiles.py)"
"$PY" -m pytest -q -p no:cacheprovider tests/packaging/test_lockfiles.py || status=1

echo "== vulnerabilities (pip-audit)"
strict=()
[[ ${STRICT:-0} == 1 ]] && strict=(--strict)
"$PY" hack/supply_chain.py audit "${strict[@]}" \
  requirements/sidecar.txt requirements/sidecar-ner.txt requirements/operator.txt \
  requirements/build.txt || status=1

echo "== licences (pip-licenses over the images' venvs)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for component in sidecar-ner operator; do
  env -u PYTHONPATH PYTHON="$base_python" hack/install-venv.sh "$work/$component" "$component"
done
"$PY" hack/supply_chain.py licences "$work/sidecar-ner" "$work/operator" || status=1

echo "supply-chain: $([[ $status == 0 ]] && echo ok || echo FAILED) in $((SECONDS - start)) s"
exit "$status"
