#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl (from this Go module) and Gardener's
# machine-controller-manager (from the module in gardener-mcm/) into a cache outside the checkout:
#
#   ${MCM_WASM_CACHE:-~/.cache/mcm-wasm}/controlplane/k8s-<v>-etcd-<v>/bin/{etcd,kube-apiserver,kubectl}
#   ${MCM_WASM_CACHE:-~/.cache/mcm-wasm}/gardener-mcm/<v>/bin/machine-controller-manager (module gardener-mcm/)
#   ${MCM_WASM_CACHE:-~/.cache/mcm-wasm}/gardener-mcm/<v>/crds/*.yaml   (Gardener's own CRDs)
#
# A build is skipped when its stamp matches the pinned inputs (go.mod, go.sum, cmd/, versions).
# Usage: build.sh [controlplane|gardener-mcm|all]   (default: all)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
what="${1:-all}"

if ! command -v go >/dev/null 2>&1; then
    echo "error: Go is not installed (or not on PATH). The local Kubernetes control plane" >&2
    echo "       (etcd, kube-apiserver, kubectl) and Gardener's machine-controller-manager are" >&2
    echo "       built from Go modules; install Go >= 1.26 and run 'just controlplane' again." >&2
    exit 1
fi

# shellcheck source=versions.env
source "$here/versions.env"

k8s_in_gomod="$(grep -E '^\s*k8s.io/kubernetes v' "$here/go.mod" | awk '{print $2}' | head -1)"
etcd_in_gomod="$(grep -E '^\s*go.etcd.io/etcd/server/v3 v' "$here/go.mod" | awk '{print $2}' | head -1)"
if [[ "$k8s_in_gomod" != "$KUBERNETES_VERSION" || "$etcd_in_gomod" != "$ETCD_VERSION" ]]; then
    echo "error: versions.env (k8s $KUBERNETES_VERSION, etcd $ETCD_VERSION) does not match" >&2
    echo "       go.mod (k8s $k8s_in_gomod, etcd $etcd_in_gomod)" >&2
    exit 1
fi

cache_root="${MCM_WASM_CACHE:-$HOME/.cache/mcm-wasm}"
nice_cmd=(nice -n "${MCM_WASM_BUILD_NICE:-10}")

# Prints one line per 100 compiled packages so that a long build shows it is alive;
# keeps the full log and shows its tail if the build fails.
run_logged() {
    local log="$1"; shift
    local start=$SECONDS
    set +e
    "$@" > "$log" 2>&1 &
    local pid=$!
    local last=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        local n
        n=$(wc -l < "$log")
        if (( n / 100 > last / 100 )); then
            echo "    ... $n packages compiled ($((SECONDS - start)) s)"
            last=$n
        fi
    done
    wait "$pid"
    local rc=$?
    set -e
    if (( rc != 0 )); then
        echo "error: build failed (exit $rc); last lines of $log:" >&2
        tail -40 "$log" >&2
        exit "$rc"
    fi
}

build_controlplane() {
    local dir="$cache_root/controlplane/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
    local stamp
    stamp="$(cat "$here/go.mod" "$here/go.sum" "$here/versions.env" "$here"/cmd/*/main.go | sha256sum | cut -d' ' -f1)"
    if [[ -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$stamp" \
          && -x "$dir/bin/etcd" && -x "$dir/bin/kube-apiserver" && -x "$dir/bin/kubectl" ]]; then
        echo "control plane: cached in $dir (kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION)"
        return
    fi
    echo "control plane: building kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION into $dir"
    echo "               (the first build takes many minutes on 2 cores; later runs reuse the cache)"
    mkdir -p "$dir/bin" "$dir/logs"
    rm -f "$dir/stamp"
    local ldflags="-s -w"
    local v="${KUBERNETES_VERSION#v}"
    ldflags+=" -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=${v%%.*}"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2)"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=${v%%.*}"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$(echo "$v" | cut -d. -f2)"
    local i=0
    for bin in etcd kube-apiserver kubectl; do
        i=$((i + 1))
        local t0=$SECONDS
        echo "  [$i/3] $bin"
        (cd "$here" && run_logged "$dir/logs/$bin.log" \
            "${nice_cmd[@]}" go build -mod=readonly -trimpath -v -ldflags "$ldflags" \
                -o "$dir/bin/$bin.tmp" "./cmd/$bin")
        mv "$dir/bin/$bin.tmp" "$dir/bin/$bin"
        echo "  [$i/3] $bin built in $((SECONDS - t0)) s"
    done
    echo "$stamp" > "$dir/stamp"
    echo "control plane: done ($(du -sh "$dir/bin" | cut -f1) in $dir/bin)"
}

build_gardener_mcm() {
    local module=github.com/gardener/machine-controller-manager
    local moddir="$here/gardener-mcm"
    local in_gomod
    in_gomod="$(awk -v m="$module" '$1 == m { print $2; exit }' "$moddir/go.mod")"
    if [[ "$in_gomod" != "$GARDENER_MCM_VERSION" ]]; then
        echo "error: versions.env (machine-controller-manager $GARDENER_MCM_VERSION) does not match" >&2
        echo "       gardener-mcm/go.mod ($in_gomod)" >&2
        exit 1
    fi
    local dir="$cache_root/gardener-mcm/$GARDENER_MCM_VERSION"
    local stamp
    stamp="$(cat "$moddir/go.mod" "$moddir/go.sum" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$stamp" && -x "$dir/bin/machine-controller-manager" \
          && -f "$dir/crds/machine.sapcloud.io_machines.yaml" ]]; then
        echo "gardener machine-controller-manager: cached in $dir ($GARDENER_MCM_VERSION)"
        return
    fi
    echo "gardener machine-controller-manager: building $GARDENER_MCM_VERSION into $dir"
    mkdir -p "$dir/bin" "$dir/crds" "$dir/logs"
    rm -f "$dir/stamp"
    local t0=$SECONDS
    # Built from a module of our own (gardener-mcm/go.mod): `go install <pkg>@<version>` would
    # give the same dependency versions, but asks the proxy for the module's version list, which
    # the proxy refuses for this module.
    (cd "$moddir" && run_logged "$dir/logs/go-build.log" \
        "${nice_cmd[@]}" go build -mod=readonly -trimpath -v -ldflags "-s -w" \
            -o "$dir/bin/machine-controller-manager.tmp" "$module/cmd/machine-controller-manager")
    mv "$dir/bin/machine-controller-manager.tmp" "$dir/bin/machine-controller-manager"
    local src
    src="$(cd "$moddir" && go mod download -json "$module" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
    if [[ -z "$src" || ! -d "$src/kubernetes/crds" ]]; then
        echo "error: could not find Gardener's CRDs in the module ($src)" >&2
        exit 1
    fi
    cp "$src"/kubernetes/crds/machine.sapcloud.io_*.yaml "$dir/crds/"
    chmod u+w "$dir"/crds/*.yaml
    echo "$stamp" > "$dir/stamp"
    echo "gardener machine-controller-manager: built in $((SECONDS - t0)) s"
}

case "$what" in
    controlplane) build_controlplane ;;
    gardener-mcm) build_gardener_mcm ;;
    all) build_controlplane; build_gardener_mcm ;;
    *) echo "usage: $0 [controlplane|gardener-mcm|all]" >&2; exit 2 ;;
esac
