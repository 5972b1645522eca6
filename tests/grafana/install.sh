#!/usr/bin/env bash
# Installs the npm packages pinned in package.json/package-lock.json beside this script (`npm ci`): Grafana's
# dashboard types and tsc, which the dashboard test type-checks helm/finetune-operator/files/dashboard.json
# with. Cached outside the repository, keyed by a hash of the lock file and this script, so only a cold
# machine installs. Prints the directory holding node_modules on its last line.
#
#   FINETUNE_CACHE   cache root (default ~/.cache/finetune-operator)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(cat "$here/package.json" "$here/package-lock.json" "$0" | sha256sum | cut -c1-10)
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/grafana/schema-$recipe"

if [ -x "$cache/node_modules/.bin/tsc" ]; then echo "$cache"; exit 0; fi

command -v npm >/dev/null || { echo "install.sh: node and npm are needed for the dashboard schema check" >&2; exit 1; }
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$staging/"
start=$(date +%s)
(cd "$staging" && npm ci --no-audit --no-fund --ignore-scripts >&2)
"$staging/node_modules/.bin/tsc" --version >&2
echo "installed in $(( $(date +%s) - start ))s" >&2
# Publish at once: a concurrent or interrupted install never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
