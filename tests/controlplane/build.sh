#!/usr/bin/env bash
# Builds the test control plane from the Go modules pinned in go.mod/go.sum beside this script:
# kube-apiserver and kube-controller-manager at the pinned Kubernetes release, and etcd at the version that
# release depends on. Binaries are cached outside the repository, keyed by those versions and a hash of
# this recipe (go.mod, go.sum, this script), so only a cold machine builds. Prints the directory holding
# the binaries on its last line.
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kube=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/go.mod")
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-10)
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/kube/kubernetes-$kube-etcd-$etcd-$recipe"
binaries=(kube-apiserver kube-controller-manager etcd)

complete() { for b in "${binaries[@]}"; do [ -x "$cache/$b" ] || return 1; done; }
if complete; then echo "$cache"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane" >&2; exit 1; }
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
cd "$here"
export GOFLAGS=-mod=readonly CGO_ENABLED=0
start=$(date +%s)
echo "building Kubernetes $kube and etcd $etcd into $cache (cold cache: several minutes)" >&2
# A module build has no git tree to stamp from: set what `kubectl version` and /version report.
minor=$(echo "$kube" | cut -d. -f2)
version="-X k8s.io/component-base/version.gitVersion=$kube -X k8s.io/component-base/version.gitMajor=1"
version="$version -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
go build -trimpath -ldflags "-s -w $version" -o "$staging/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager >&2
go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3 >&2
echo "built in $(( $(date +%s) - start ))s" >&2
# Publish all binaries at once: a concurrent or interrupted build never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
