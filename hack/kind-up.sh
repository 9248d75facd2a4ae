#!/usr/bin/env bash
# make kind-up: aiguard on a local kind cluster, from the images built from this tree.
#
# NEEDS DOCKER. Docker is not available on this project's development and CI machines, so this
# script is not run by CI there: CI runs the same install steps (hack/install-venv.sh, in
# tests/packaging/test_install.py) and the same e2e assertions (tests/e2e/test_installed.py,
# against the local control plane). Run it on a machine with Docker, kind, kubectl and helm.
#
#  1. create the kind cluster `aiguard` (KIND_CLUSTER) unless it exists; Kubernetes >= 1.29
#     (native sidecars);
#  2. build Dockerfile.operator and Dockerfile.sidecar as aiguard-operator:TAG and
#     aiguard-sidecar:TAG (TAG=dev; NER=true bakes the spaCy model into the sidecar);
#  3. `kind load docker-image` both (no registry involved);
#  4. `helm upgrade --install` helm/aiguard into aiguard-system (AIGUARD_NAMESPACE) with the
#     local images (pullPolicy Never) and wait for it.
# The kubeconfig is written to .local/kind-kubeconfig (your ~/.kube/config is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-aiguard}
TAG=${AIGUARD_IMAGE_TAG:-dev}
NAMESPACE=${AIGUARD_NAMESPACE:-aiguard-system}
RELEASE=${AIGUARD_RELEASE:-aiguard}
NER=${NER:-false}
KUBECONFIG_KIND=${KUBECONFIG_KIND:-.local/kind-kubeconfig}
MIN_MINOR=29

die() {
  echo "kind-up: $*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"
}
need docker "https://docs.docker.com/engine/install/ (Docker is not available on this project's CI machines)"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is it running, may you use it?)"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind-up: using the existing kind cluster $CLUSTER"
else
  kind create cluster --name "$CLUSTER" --wait 180s
fi
mkdir -p "$(dirname "$KUBECONFIG_KIND")"
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_KIND"
export KUBECONFIG=$KUBECONFIG_KIND

minor=$(kubectl version -o json | sed -n '/serverVersion/,$ s/.*"minor": *"\([0-9]*\).*/\1/p' | head -1)
[[ -n $minor && $minor -ge $MIN_MINOR ]] ||
  die "the kind node runs Kubernetes 1.${minor:-?}; aiguard needs 1.$MIN_MINOR+ (native sidecars): use a newer kind or --image kindest/node:v1.31.x"

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
docker build -f Dockerfile.operator --build-arg REVISION="$revision" -t "aiguard-operator:$TAG" .
docker build -f Dockerfile.sidecar --build-arg REVISION="$revision" --build-arg NER="$NER" \
  -t "aiguard-sidecar:$TAG" .
kind load docker-image --name "$CLUSTER" "aiguard-operator:$TAG" "aiguard-sidecar:$TAG"

helm upgrade --install "$RELEASE" helm/aiguard \
  --namespace "$NAMESPACE" --create-namespace \
  --set operator.image.repository=aiguard-operator \
  --set operator.image.tag="$TAG" \
  --set operator.image.pullPolicy=Never \
  --set sidecar.image.repository=aiguard-sidecar \
  --set sidecar.image.tag="$TAG" \
  --set sidecar.image.pullPolicy=Never \
  --wait --timeout 5m

kubectl -n "$NAMESPACE" get deployments,pods
echo "kind-up: aiguard is installed; KUBECONFIG=$KUBECONFIG_KIND kubectl get aipolicies -A"
