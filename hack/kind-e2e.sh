#!/usr/bin/env bash
# make kind-e2e: hack/kind-up.sh, then the end-to-end assertions CI runs against the local
# control plane (tests/e2e/test_installed.py), this time against the Helm release on kind:
# the operator Deployment Ready, the CRDs established, an AIPolicy Ready, a labelled
# Deployment's pod injected with the sidecar, running, and its request reaching the provider
# stand-in (tests/harness/standin.py in a container of the same pod) through the sidecar with
# the PII redacted.
#
# NEEDS DOCKER (see hack/kind-up.sh): not run on this project's CI machines, which have none.
# Leaves the cluster running; delete it with `kind delete cluster --name aiguard`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || {
  echo "kind-e2e: $PY not found; run 'make setup' first" >&2
  exit 1
}

hack/kind-up.sh

export AIGUARD_E2E_KUBECONFIG=${KUBECONFIG_KIND:-.local/kind-kubeconfig}
export AIGUARD_E2E_NAMESPACE=${AIGUARD_NAMESPACE:-aiguard-system}
export AIGUARD_E2E_IMAGE=aiguard-sidecar:${AIGUARD_IMAGE_TAG:-dev}
"$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_installed.py
