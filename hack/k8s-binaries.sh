#!/usr/bin/env bash
# Build the local control plane's binaries from source through the Go module proxy, once.
#
#   hack/k8s-binaries.sh            # build what is missing, print the bin directory
#
# Binaries are cached outside the work tree, keyed by version, in
#   ${AIGUARD_CACHE:-$HOME/.cache/aiguard}/k8s/<K8S_VERSION>/bin
# and linked into .local/bin by `make cluster-up`. Only the first run pays for the build
# (about 15-25 minutes on 2 cores); later runs print the directory and exit.
#
# Why a wrapper module: k8s.io/kubernetes cannot be `go install`ed, because its go.mod replaces
# the staging modules (k8s.io/api, k8s.io/apiserver, ...) with local paths (kubernetes#79384).
# We generate a throwaway module that requires k8s.io/kubernetes at the release and replaces
# every staging module with its published v0.X.Y twin, then `go build` the commands with the
# version ldflags, so the server reports its real version.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE="${AIGUARD_CACHE:-$HOME/.cache/aiguard}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

log() { printf '[k8s-binaries] %s\n' "$*" >&2; }

need() {
  for b in "$@"; do [ -x "$BIN/$b" ] || return 0; done
  return 1
}

mkdir -p "$BIN"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

build_kubernetes() {
  local work="$CACHE/k8s/$K8S_VERSION/wrapper"
  rm -rf "$work" && mkdir -p "$work"
  log "downloading k8s.io/kubernetes@$K8S_VERSION module metadata"
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local goline
  goline=$(grep -E '^go [0-9]' "$gomod" | head -1)
  {
    echo "module aiguard.dev/k8s-build"
    echo
    echo "$goline"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # the release's own requirements, so every dependency is at the version it was tested with
    awk '/^require \(/{p=1; next} p&&/^\)/{p=0} p' "$gomod" | grep -v '^\s*//' | sed 's/ \/\/ indirect//' |
      awk 'NF>=2 {print "require " $1 " " $2}'
    echo
    # staging modules: local paths upstream, published v0.X.Y twins here
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  # the kubernetes module's own requirement on staging modules is v0.0.0; the replace covers it.
  log "wrapper module written ($(grep -c '^replace' "$work/go.mod") staging modules at $STAGING_VERSION)"
  local pkg=k8s.io/component-base/version
  local cpkg=k8s.io/client-go/pkg/version
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in "$pkg" "$cpkg"; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=module-proxy-$K8S_VERSION"
  done
  log "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (slow the first time: many minutes on 2 cores)"
  (cd "$work" && go build -v -trimpath -ldflags "$ld" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl 2>&1 | awk '{n++; if (n%200==0) printf "[k8s-binaries] ... %d packages compiled\n", n > "/dev/stderr"}')
  for b in kube-apiserver kube-controller-manager kubectl; do
    [ -x "$BIN/$b" ] || { log "build failed: $b missing"; exit 1; }
  done
}

build_etcd() {
  local work="$CACHE/k8s/$K8S_VERSION/etcd-wrapper"
  rm -rf "$work" && mkdir -p "$work"
  log "building etcd $ETCD_VERSION"
  (cd "$work" && go mod init aiguard.dev/etcd-build >/dev/null 2>&1 &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  [ -x "$BIN/etcd" ] || { log "build failed: etcd"; exit 1; }
}

build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  [ -x "$BIN/helm" ] || { log "build failed: helm"; exit 1; }
}

start=$(date +%s)
if need etcd; then build_etcd; fi
if need kube-apiserver kube-controller-manager kubectl; then build_kubernetes; fi
if need helm; then build_helm; fi
took=$(( $(date +%s) - start ))
[ "$took" -gt 2 ] && log "built in ${took}s"
echo "$BIN"
