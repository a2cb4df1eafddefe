#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules into a cache outside the repository:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
#   etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v3)
# Each set is built once per pinned version and reused; a finished set has a .complete marker.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${PIXTRAL_CACHE:-$HOME/.cache/pixtral-operator}"
BIN_ROOT="$CACHE_ROOT/bin"
WORK_ROOT="$CACHE_ROOT/build"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Kubernetes gets one change: endpoint addresses may be loopback. Upstream rejects 127.0.0.0/8 in
# Endpoints and EndpointSlices ("may not be in the loopback range"), but the local cluster's pods
# live on 127.x addresses and the EndpointSlice controller must publish them. The check is removed
# from the extracted module source (Go refuses build overlays inside the module cache, and a
# replaced copy of the module would recompile all of it); everything else is upstream.
KUBERNETES_RECIPE="kubernetes-recipe-2 (kube-apiserver accepts loopback endpoint IPs)"

allow_loopback_endpoints() {
  local module_dir="$1"
  local file="$module_dir/pkg/apis/core/validation/validation.go"
  chmod u+w "$file" "$(dirname "$file")"
  python3 - "$file" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
marker = "// Loopback endpoints are allowed: the local cluster's pods have 127.x addresses."
check = """	if ip.IsLoopback() {
		allErrs = append(allErrs, field.Invalid(fldPath, ipAddress, "may not be in the loopback range (127.0.0.0/8, ::1/128)"))
	}
"""
if marker in text:
    sys.exit(0)
if text.count(check) != 1:
    sys.exit(f"cannot allow loopback endpoints: the check is not found exactly once in {path}")
open(path, "w").write(text.replace(check, "\t" + marker + "\n"))
PY
  chmod a-w "$file" "$(dirname "$file")"
}

build_kubernetes() {
  local out="$BIN_ROOT/kubernetes-$K8S_VERSION"
  if [[ -f "$out/.complete" ]] && grep -qxF "$KUBERNETES_RECIPE" "$out/.complete"; then
    log "kubernetes $K8S_VERSION: cached in $out"; return
  fi
  if [[ -f "$out/.complete" ]]; then
    # Built by an earlier recipe: only kube-apiserver differs.
    rm -f "$out/.complete" "$out/kube-apiserver"
  fi
  local staging_version="v0.${K8S_VERSION#v1.}"
  local mod="$WORK_ROOT/kubernetes-$K8S_VERSION"
  mkdir -p "$mod" "$out"
  log "kubernetes $K8S_VERSION: preparing wrapper module (staging modules at $staging_version)"
  local gomod
  gomod="$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module pixtral.dev/localcluster/kubernetes"
    echo
    grep -E '^go [0-9]' "$gomod" | head -1
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module that k8s.io/kubernetes replaces with ./staging/... is pinned to its
    # published version instead (replace directives do not apply to dependents).
    grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > "$mod/go.mod"
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$mod" && GOFLAGS="$GOFLAGS -mod=mod" go mod tidy -e >/dev/null 2>&1 || true)
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=dirty -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  local module_dir
  module_dir="$(cd "$mod" && go list -mod=mod -m -f '{{.Dir}}' k8s.io/kubernetes)"
  allow_loopback_endpoints "$module_dir"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    if [[ -x "$out/$cmd" ]]; then continue; fi
    log "kubernetes $K8S_VERSION: building $cmd (a cold build takes many minutes on 2 cores)"
    (cd "$mod" && go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
  done
  echo "$KUBERNETES_RECIPE" > "$out/.complete"
  log "kubernetes $K8S_VERSION: done"
}

build_etcd() {
  local out="$BIN_ROOT/etcd-$ETCD_VERSION"
  if [[ -f "$out/.complete" ]]; then log "etcd $ETCD_VERSION: cached in $out"; return; fi
  local mod="$WORK_ROOT/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$out"
  cat > "$mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  if [[ ! -f "$mod/go.mod" ]]; then
    (cd "$mod" && go mod init pixtral.dev/localcluster/etcd >/dev/null 2>&1)
  fi
  log "etcd $ETCD_VERSION: resolving and building"
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 && go mod tidy >/dev/null 2>&1)
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .)
  mv "$out/etcd.tmp" "$out/etcd"
  touch "$out/.complete"
  log "etcd $ETCD_VERSION: done"
}

build_helm() {
  local out="$BIN_ROOT/helm-$HELM_VERSION"
  # The recipe names what the build stamps in; a set built by an older recipe is rebuilt.
  local recipe="helm-recipe-2 (version and Kubernetes capabilities stamped)"
  if [[ -f "$out/.complete" ]] && grep -qxF "$recipe" "$out/.complete"; then log "helm $HELM_VERSION: cached in $out"; return; fi
  mkdir -p "$out" "$WORK_ROOT"
  log "helm $HELM_VERSION: building"
  # Like helm's own Makefile: `helm template` and `helm lint` assume the Kubernetes version of the
  # client-go helm was built with (otherwise v1.20, which fails charts with a kubeVersion).
  local gomod client_go k8s_minor
  gomod="$(cd "$WORK_ROOT" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")"
  k8s_minor="$(echo "$client_go" | cut -d. -f2)"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  rm -f "$out/.complete"
  GOBIN="$out" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$recipe" > "$out/.complete"
  log "helm $HELM_VERSION: done (default Kubernetes capabilities v1.$k8s_minor)"
}

what="${1:-all}"
case "$what" in
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  all) build_etcd; build_helm; build_kubernetes ;;
  paths)
    echo "KUBE_BIN=$BIN_ROOT/kubernetes-$K8S_VERSION"
    echo "ETCD_BIN=$BIN_ROOT/etcd-$ETCD_VERSION"
    echo "HELM_BIN=$BIN_ROOT/helm-$HELM_VERSION" ;;
  *) echo "usage: $0 [all|kubernetes|etcd|helm|paths]" >&2; exit 2 ;;
esac
