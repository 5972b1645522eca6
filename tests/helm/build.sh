#!/usr/bin/env bash
# Builds the helm client the chart tests run, from the Go module pinned in go.mod/go.sum beside this script
# (helm.sh/helm/v3/cmd/helm). The binary is cached outside the repository, keyed by the helm version and a
# hash of this recipe (go.mod, go.sum, this script), so only a cold machine builds. Prints the directory
# holding the binary on its last line.
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
helm=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/go.mod")
clientgo=$(awk '$1 == "k8s.io/client-go" {print $2}' "$here/go.mod")
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-10)
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/helm/helm-$helm-$recipe"

if [ -x "$cache/helm" ]; then echo "$cache"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build helm" >&2; exit 1; }
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
cd "$here"
export GOFLAGS=-mod=readonly CGO_ENABLED=0
start=$(date +%s)
echo "building helm $helm into $cache (cold cache: a few minutes)" >&2
# A module build has no git tree to stamp from: set what `helm version` reports, and (as helm's Makefile
# does) the Kubernetes version `helm template` and `helm lint` assume, from the client-go it links.
minor=$(echo "$clientgo" | cut -d. -f2)
version="-X helm.sh/helm/v3/internal/version.version=$helm -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
    version="$version -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
done
go build -trimpath -ldflags "-s -w $version" -o "$staging/helm" helm.sh/helm/v3/cmd/helm >&2
echo "built in $(( $(date +%s) - start ))s" >&2
# Publish at once: a concurrent or interrupted build never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
