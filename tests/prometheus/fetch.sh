#!/usr/bin/env bash
# Fetches Prometheus and promtool from Debian's `prometheus` package (no install, no root: `apt-get download`
# and `dpkg -x`), for the tests that scrape the operator and check the alerts and the dashboard. Cached
# outside the repository, keyed by the package version, so only a cold machine downloads. Prints the
# directory holding `prometheus` and `promtool` on its last line.
#
#   FINETUNE_CACHE       cache root (default ~/.cache/finetune-operator)
#   PROMETHEUS_VERSION   the Debian package version (default: the candidate apt offers)
set -euo pipefail
version="${PROMETHEUS_VERSION:-$(apt-cache policy prometheus | awk '$1 == "Candidate:" {print $2}')}"
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "fetch.sh: apt knows no prometheus package (run apt-get update)" >&2
    exit 1
fi
cache="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/prometheus/prometheus-${version//[:+~]/_}"
if [ -x "$cache/prometheus" ] && [ -x "$cache/promtool" ]; then echo "$cache"; exit 0; fi

mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$cache.partial.XXXXXX")
trap 'rm -rf "$staging"' EXIT
(cd "$staging" && apt-get download -q "prometheus=$version" >&2)
dpkg -x "$staging"/prometheus_*.deb "$staging/root"
mv "$staging/root/usr/bin/prometheus" "$staging/root/usr/bin/promtool" "$staging/"
rm -rf "$staging/root" "$staging"/*.deb
"$staging/promtool" --version >&2
# Publish at once: a concurrent or interrupted fetch never leaves a half-filled cache.
rm -rf "$cache"
mv "$staging" "$cache"
trap - EXIT
echo "$cache"
