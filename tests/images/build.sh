#!/usr/bin/env bash
# Builds the operator and/or trainer image from their Dockerfiles with buildah, daemonless: vfs storage and
# chroot isolation, so it runs as root in an unprivileged container with no Docker daemon, no overlay mount
# and no OCI runtime. Usage: build.sh operator|trainer...
#
# No registry is needed. The Dockerfiles take `ARG BASE` (default python:3.11-slim, what `docker build`
# uses); here the base is a Debian bookworm root made with mmdebstrap (python3.11, a venv at /usr/local so
# `python` and `pip` resolve as in the official image), cached as an image keyed by the python3.11 version
# apt offers and a hash of this script, so only a cold machine bootstraps it. The host's CA bundle is
# mounted over the image's for the RUN steps only (pip behind a TLS-inspecting proxy); a mount is never
# committed, so the images keep Debian's bundle.
#
# Images are tagged localhost/finetune-<name>:<version from pyproject.toml>, in a store outside the
# repository; older builds are pruned. Prints the store directory on its last line (see storage_args()).
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
store="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/images"
[ $# -gt 0 ] || { echo "usage: build.sh operator|trainer..." >&2; exit 2; }
for name in "$@"; do
    case "$name" in operator | trainer) ;; *) echo "build.sh: no image named '$name'" >&2; exit 2 ;; esac
done
for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (make images installs it)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "build.sh: buildah with vfs and chroot isolation runs as root here" >&2; exit 1; }

buildah() { command buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs "$@"; }
mkdir -p "$store"
# One build at a time in this store; so the working containers found now are ones an interrupted build
# left behind.
exec 9>"$store/lock"
flock 9
buildah rm --all >/dev/null
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)

python=$(apt-cache policy python3.11 | awk '$1 == "Candidate:" {print $2}')
if [ -z "$python" ] || [ "$python" = "(none)" ]; then
    echo "build.sh: apt knows no python3.11 package (run apt-get update)" >&2
    exit 1
fi
# minbase: no compiler, no build tools. Docs, man pages and translations are left out as in the slim image.
# The venv at /usr/local puts python, python3 and pip first on the default PATH.
recipe=(--variant=minbase --include=python3.11,python3.11-venv,ca-certificates
    --aptopt='Acquire::Languages "none"'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --customize-hook='chroot "$1" python3.11 -m venv /usr/local' bookworm)
config=(--env LANG=C.UTF-8 --cmd python3 --label org.opencontainers.image.base.name=debian:bookworm)
key=$(printf '%s\n' "${recipe[@]}" "${config[@]}" | sha256sum | cut -c1-10)
base="localhost/finetune-base:py${python//[:+~]/_}-$key"

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    start=$(date +%s)
    echo "bootstrapping $base with mmdebstrap (cold cache: a minute or two)" >&2
    staging=$(mktemp -d "$store/base.partial.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    mmdebstrap --quiet "${recipe[@]}" "$staging/root.tar" >&2
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$staging/root.tar" / >&2
    buildah config "${config[@]}" "$container" >&2
    buildah commit --quiet --rm "$container" "$base" >/dev/null
    rm -rf "$staging"
    trap - EXIT
    echo "base image in $(( $(date +%s) - start ))s" >&2
fi

for name in "$@"; do
    case "$name" in operator) dockerfile=operator/Dockerfile ;; trainer) dockerfile=trainer_image/Dockerfile ;; esac
    image="localhost/finetune-$name:$version"
    start=$(date +%s)
    echo "building $image from $dockerfile" >&2
    mounts=()
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mounts=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    fi
    buildah bud --quiet --isolation chroot --network host --pull=never \
        --build-arg BASE="$base" "${mounts[@]}" -f "$root/$dockerfile" -t "$image" "$root" >&2
    echo "$image built in $(( $(date +%s) - start ))s" >&2
done

# The previous builds (now untagged) and bases of another key hold gigabytes each in vfs: drop them.
buildah images --format '{{.Name}}:{{.Tag}}' | awk -v keep="$base" '/^localhost\/finetune-base:/ && $0 != keep' |
    while read -r old; do buildah rmi "$old" >/dev/null; done
buildah rmi --prune >/dev/null 2>&1 || true
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' >&2
echo "$store"
