#!/usr/bin/env bash
# Builds Argo CD for the Argo CD check from the Go module pinned in go.mod/go.sum beside this script
# (github.com/argoproj/argo-cd/v3/cmd). Argo CD ships one binary that becomes the command its name says
# (argv[0]: argocd-application-controller, argocd-repo-server, argocd-server, ...); the cache holds it as
# `argocd` with the two the check runs linked to it, and beside them what Argo CD's image adds from the
# same source: the Application and AppProject CRDs (crds/) and git-verify-wrapper.sh, which the repo server
# runs (from PATH) on every revision it renders, signed or not. Cached outside the repository, keyed by
# the Argo CD version and a hash of this recipe (go.mod, go.sum, this script), so only a cold machine
# builds. Prints the directory holding the binaries on its last line.
#
# Argo CD v3.6 needs Go 1.27: the go command fetches go1.27.3 from the module proxy (GOTOOLCHAIN).
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
argocd=$(awk '$1 == "github.com/argoproj/argo-cd/v3" {print $2}' "$here/go.mod")
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-10)
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/argocd/argocd-$argocd-$recipe"
binaries=(argocd argocd-application-controller argocd-repo-server git-verify-wrapper.sh)

complete() { for b in "${binaries[@]}"; do [ -x "$cache/$b" ] || return 1; done; }
if complete; then echo "$cache"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build Argo CD" >&2; exit 1; }
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
cd "$here"
export GOFLAGS=-mod=readonly CGO_ENABLED=0 GOTOOLCHAIN=go1.27.3
start=$(date +%s)
echo "building Argo CD $argocd into $cache (cold cache: several minutes)" >&2
# A module build has no git tree to stamp from: set what `argocd version` and the API report.
version="-X github.com/argoproj/argo-cd/v3/common.version=${argocd#v} -X github.com/argoproj/argo-cd/v3/common.gitTreeState=clean"
go build -trimpath -ldflags "-s -w $version" -o "$staging/argocd" github.com/argoproj/argo-cd/v3/cmd >&2
ln -s argocd "$staging/argocd-application-controller"
ln -s argocd "$staging/argocd-repo-server"
source=$(go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
mkdir "$staging/crds"
cp "$source/manifests/crds/application-crd.yaml" "$source/manifests/crds/appproject-crd.yaml" "$staging/crds/"
install -m 0755 "$source/hack/git-verify-wrapper.sh" "$staging/"
echo "built in $(( $(date +%s) - start ))s" >&2
# Publish at once: a concurrent or interrupted build never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
