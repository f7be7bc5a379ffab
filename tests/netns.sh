#!/usr/bin/env bash
# Run a command in a fresh loopback-only network namespace, so every server the tests start
# (Ray binds the machine's routable address otherwise) listens on 127.0.0.1 and no test traffic
# can leave the machine. Needs root and iproute2; without them it runs the command as is, warning.
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "netns.sh: not root or no iproute2: running WITHOUT network isolation" >&2
  exec "$@"
fi
ns="ragserve-test-$$"
ip netns add "$ns"
trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$@"
