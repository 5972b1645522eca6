#!/usr/bin/env bash
# Fetches redis-server from Debian (no install, no root: `apt-get download` and `dpkg -x`) for the Argo CD
# check: Argo CD's controller and repo server cache manifests and app state in Redis. Debian's redis-server
# package holds only a link to redis-check-rdb from redis-tools (one binary, whose name picks the mode);
# it is kept as `redis-server.bin` with the two libraries the base system lacks (libjemalloc2, liblzf1),
# started by a `redis-server` wrapper that points the loader at them. Cached outside the repository, keyed
# by the package version, so only a cold machine downloads. Prints the directory holding `redis-server`.
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
#   REDIS_VERSION    the Debian package version of redis-tools (default: the candidate apt offers)
set -euo pipefail
version="${REDIS_VERSION:-$(apt-cache policy redis-tools | awk '$1 == "Candidate:" {print $2}')}"
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "fetch-redis.sh: apt knows no redis-tools package (run apt-get update)" >&2
    exit 1
fi
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/redis/redis-${version//[:+~]/_}"
if [ -x "$cache/redis-server" ] && [ -x "$cache/redis-server.bin" ]; then echo "$cache"; exit 0; fi

mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
(cd "$staging" && apt-get download -q "redis-tools=$version" libjemalloc2 liblzf1 >&2)
for deb in "$staging"/*.deb; do dpkg -x "$deb" "$staging/root"; done
mkdir "$staging/lib"
mv "$staging/root/usr/bin/redis-check-rdb" "$staging/redis-server.bin"
mv "$staging"/root/usr/lib/x86_64-linux-gnu/lib{jemalloc,lzf}.so* "$staging/lib/"
rm -rf "$staging/root" "$staging"/*.deb
cat > "$staging/redis-server" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/redis-server.bin" "$@"
WRAPPER
chmod +x "$staging/redis-server"
"$staging/redis-server" --version >&2
# Publish at once: a concurrent or interrupted fetch never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
