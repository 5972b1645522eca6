#!/usr/bin/env bash
# Runs a command in a network namespace of its own, for the rollout tests (tests/rollout): lo is up and holds
# the TEST-NET-1 addresses 192.0.2.10 .. 192.0.2.49 (RFC 5737, never routed), which the tests' kubelet gives
# to the pods it starts. The API server refuses loopback addresses in EndpointSlices, so pods cannot live on
# 127.0.0.1; everything else (API server, S3, Prometheus, Envoy Gateway's fixed ports 8081, 9443, 18000) stays
# on 127.0.0.1, private to the namespace, so runs never collide with each other or with the machine.
#
#   bash tests/gateway/netns.sh CMD [ARGS...]
#
# As root: `unshare --net`. Otherwise a user namespace maps the caller to root inside it
# (`unshare --user --map-root-user --net`), which needs unprivileged user namespaces. CMD sees the address list
# in FINETUNE_NETNS_ADDRESSES (space-separated).
set -euo pipefail
first=10
last=49

if [ "${1:-}" = --inside ]; then
	shift
	ip link set lo up
	addresses=
	for i in $(seq "$first" "$last"); do
		ip addr add "192.0.2.$i/32" dev lo
		addresses="$addresses 192.0.2.$i"
	done
	export FINETUNE_NETNS_ADDRESSES="${addresses# }"
	exec "$@"
fi

[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
command -v unshare >/dev/null || { echo "netns.sh: unshare (util-linux) is needed" >&2; exit 1; }
command -v ip >/dev/null || { echo "netns.sh: ip (iproute2) is needed" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
	namespace=(unshare --net)
else
	namespace=(unshare --user --map-root-user --net)
fi
if ! refused=$("${namespace[@]}" true 2>&1); then
	echo "netns.sh: '${namespace[*]}' was refused: $refused" >&2
	echo "netns.sh: run as root, or allow unprivileged user namespaces" \
		"(sysctl kernel.unprivileged_userns_clone=1 / kernel.apparmor_restrict_unprivileged_userns=0)" >&2
	exit 1
fi
exec "${namespace[@]}" bash "$0" --inside "$@"
