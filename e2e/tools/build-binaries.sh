#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules into a cache outside the repository:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
#   kubelet, kube-proxy and the pause program (k8s.io/kubernetes)
#   etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v3)
#   coredns, kube-router (NetworkPolicy enforcement), crictl
#   prometheus and promtool (github.com/prometheus/prometheus: Prometheus v3, Kubernetes discovery)
#   the Prometheus Operator and its config reloader (github.com/prometheus-operator/prometheus-operator)
# Each set is built once per pinned version and reused; a finished set has a .complete marker.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
# The Go module of Prometheus 3.16.0 (Prometheus tags its Go module v0.<major><minor>.<patch>).
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE_ROOT="${PIXTRAL_CACHE:-$HOME/.cache/pixtral-operator}"
BIN_ROOT="$CACHE_ROOT/bin"
WORK_ROOT="$CACHE_ROOT/build"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A module that requires `module@version` and pins each module that module's go.mod replaces with a
# local directory (lines matching `replaced`) to its published `pin_version`: replace directives do
# not apply to dependents. tools.go imports the commands so `go mod tidy` resolves them.
write_wrapper_module() {
  local dir="$1" name="$2" module="$3" version="$4" replaced="$5" pin_version="$6"
  shift 6
  local gomod
  gomod="$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module pixtral.dev/localcluster/$name"
    echo
    grep -E '^go [0-9]' "$gomod" | head -1
    echo
    echo "require $module $version"
    echo
    grep -E "$replaced" "$gomod" | awk -v v="$pin_version" '{print "replace " $1 " => " $1 " " v}'
  } > "$dir/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } > "$dir/tools.go"
}

# Every Kubernetes binary is built from the upstream module, unmodified. The recipe names what a
# finished set holds; a set built by an older recipe is rebuilt.
KUBERNETES_RECIPE="kubernetes-recipe-3 (upstream source; kubelet and kube-proxy included)"
KUBERNETES_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

build_kubernetes() {
  local out="$BIN_ROOT/kubernetes-$K8S_VERSION"
  if [[ -f "$out/.complete" ]] && grep -qxF "$KUBERNETES_RECIPE" "$out/.complete"; then
    log "kubernetes $K8S_VERSION: cached in $out"; return
  fi
  if [[ -f "$out/.complete" ]]; then
    # Built by an earlier recipe, whose kube-apiserver carried a source change.
    rm -f "$out/.complete" "$out/kube-apiserver"
  fi
  local staging_version="v0.${K8S_VERSION#v1.}"
  local mod="$WORK_ROOT/kubernetes-$K8S_VERSION"
  mkdir -p "$mod" "$out"
  log "kubernetes $K8S_VERSION: preparing wrapper module (staging modules at $staging_version)"
  # Every staging module that k8s.io/kubernetes replaces with ./staging/... is pinned to its
  # published version instead.
  write_wrapper_module "$mod" kubernetes k8s.io/kubernetes "$K8S_VERSION" \
    '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$staging_version" \
    "${KUBERNETES_COMMANDS[@]/#/k8s.io/kubernetes/cmd/}"
  (cd "$mod" && GOFLAGS="$GOFLAGS -mod=mod" go mod tidy -e >/dev/null 2>&1 || true)
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in "${KUBERNETES_COMMANDS[@]}"; do
    if [[ -x "$out/$cmd" ]]; then continue; fi
    log "kubernetes $K8S_VERSION: building $cmd (a cold build takes many minutes on 2 cores)"
    (cd "$mod" && go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
  done
  # The pause image's program ships in the module; a static build of it is the sandbox image.
  if [[ ! -x "$out/pause" ]]; then
    local module_dir
    module_dir="$(cd "$mod" && go list -mod=mod -m -f '{{.Dir}}' k8s.io/kubernetes)"
    gcc -Os -static -o "$out/pause.tmp" "$module_dir/build/pause/linux/pause.c"
    mv "$out/pause.tmp" "$out/pause"
  fi
  echo "$KUBERNETES_RECIPE" > "$out/.complete"
  log "kubernetes $K8S_VERSION: done"
}

# A Go command installed from its module at a pinned version (no replace directives in its go.mod).
go_install_pinned() {
  local name="$1" version="$2" package="$3" ldflags="${4:--s -w}"
  local out="$BIN_ROOT/$name-$version"
  if [[ -f "$out/.complete" ]]; then log "$name $version: cached in $out"; return; fi
  mkdir -p "$out" "$WORK_ROOT"
  log "$name $version: building"
  (cd "$WORK_ROOT" && GOBIN="$out" go install -trimpath -ldflags "$ldflags" "$package@$version")
  touch "$out/.complete"
  log "$name $version: done"
}

# The node add-ons: cluster DNS, the NetworkPolicy enforcer, and the CRI debugging client.
build_addons() {
  go_install_pinned coredns "$COREDNS_VERSION" github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
  go_install_pinned kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
    "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
  go_install_pinned crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
}

# Prometheus v3 and promtool. The web UI's assets are embedded only with the `builtinassets` tag,
# which needs the UI built with npm first; without it Prometheus serves its HTTP API (all the
# tests, the demo and the autoscaler use) and answers the UI's pages with 404. Of the service
# discoveries only Kubernetes' is compiled in (Prometheus' own build tags): the cloud SDKs of the
# others are most of a cold build's time and nothing here uses them.
PROMETHEUS_TAGS="remove_all_sd,enable_kubernetes_sd"
build_prometheus() {
  local out="$BIN_ROOT/prometheus-$PROMETHEUS_VERSION"
  local recipe="prometheus-recipe-2 (tags $PROMETHEUS_TAGS; promtool; release file)"
  if [[ -f "$out/.complete" ]] && grep -qxF "$recipe" "$out/.complete"; then
    log "prometheus $PROMETHEUS_VERSION: cached in $out"; return
  fi
  local digits="${PROMETHEUS_VERSION#v0.}"   # 316.0 -> 3.16.0, 305.1 -> 3.5.1
  local semver="${digits:0:1}.$((10#${digits:1:2})).${digits##*.}"
  local ldflags="-s -w -X github.com/prometheus/common/version.Version=$semver -X github.com/prometheus/common/version.Branch=release -X github.com/prometheus/common/version.BuildUser=pixtral-operator"
  rm -f "$out/.complete"
  mkdir -p "$out" "$WORK_ROOT"
  local cmd
  for cmd in prometheus promtool; do
    log "$cmd $PROMETHEUS_VERSION: building (tags $PROMETHEUS_TAGS)"
    (cd "$WORK_ROOT" && GOBIN="$out" go install -trimpath -tags "$PROMETHEUS_TAGS" -ldflags "$ldflags" \
      "github.com/prometheus/prometheus/cmd/$cmd@$PROMETHEUS_VERSION")
  done
  # The release the Prometheus resource names (spec.version), which the Prometheus Operator reads
  # to choose the flags it passes.
  echo "v$semver" > "$out/release"
  echo "$recipe" > "$out/.complete"
  log "prometheus $PROMETHEUS_VERSION: done"
}

# The Prometheus Operator's go.mod replaces its two API modules with local directories, which do
# not apply to a dependent, so (as for Kubernetes) a wrapper module pins them to the same release.
build_prometheus_operator() {
  local out="$BIN_ROOT/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [[ -f "$out/.complete" ]]; then log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: cached in $out"; return; fi
  local module=github.com/prometheus-operator/prometheus-operator
  local mod="$WORK_ROOT/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  mkdir -p "$mod" "$out"
  write_wrapper_module "$mod" prometheus-operator "$module" "$PROMETHEUS_OPERATOR_VERSION" \
    "^\\s*$module/[a-z/]+ => \\./" "$PROMETHEUS_OPERATOR_VERSION" \
    "$module/cmd/operator" "$module/cmd/prometheus-config-reloader"
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: resolving and building"
  (cd "$mod" && GOFLAGS="$GOFLAGS -mod=mod" go mod tidy -e >/dev/null 2>&1 || true)
  local ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v} -X github.com/prometheus/common/version.Branch=release"
  local cmd
  for cmd in operator prometheus-config-reloader; do
    (cd "$mod" && go build -mod=mod -trimpath -ldflags "$ldflags" -o "$out/$cmd.tmp" "$module/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
  done
  # The CRDs and the ClusterRoles of this release, applied by the local cluster (the module ships
  # them as YAML).
  local module_dir
  module_dir="$(cd "$mod" && go list -mod=mod -m -f '{{.Dir}}' "$module")"
  mkdir -p "$out/crds" "$out/rbac"
  cp "$module_dir"/example/prometheus-operator-crd/*.yaml "$out/crds/"
  cp "$module_dir"/example/rbac/prometheus-operator/prometheus-operator-cluster-role.yaml \
     "$module_dir"/example/rbac/prometheus/prometheus-cluster-role.yaml "$out/rbac/"
  chmod -R u+w "$out/crds" "$out/rbac"
  touch "$out/.complete"
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: done"
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
  addons) build_addons ;;
  prometheus) build_prometheus; build_prometheus_operator ;;
  all) build_etcd; build_helm; build_kubernetes; build_addons; build_prometheus; build_prometheus_operator ;;
  paths)
    echo "KUBE_BIN=$BIN_ROOT/kubernetes-$K8S_VERSION"
    echo "ETCD_BIN=$BIN_ROOT/etcd-$ETCD_VERSION"
    echo "HELM_BIN=$BIN_ROOT/helm-$HELM_VERSION"
    echo "COREDNS_BIN=$BIN_ROOT/coredns-$COREDNS_VERSION"
    echo "KUBE_ROUTER_BIN=$BIN_ROOT/kube-router-$KUBE_ROUTER_VERSION"
    echo "CRICTL_BIN=$BIN_ROOT/crictl-$CRICTL_VERSION"
    echo "PROMETHEUS_BIN=$BIN_ROOT/prometheus-$PROMETHEUS_VERSION"
    echo "PROMETHEUS_OPERATOR_BIN=$BIN_ROOT/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" ;;
  *) echo "usage: $0 [all|kubernetes|etcd|helm|addons|prometheus|paths]" >&2; exit 2 ;;
esac
