#!/usr/bin/env bash
# The Shoal demo: four nodes (orders, two invoice instances, shipping) find each other by mDNS,
# each in its own network namespace on a bridged LAN, and exchange requests and commands.
# They print what they found and what they exchanged, then stop by themselves.
#
# Needs root for the namespaces (made with scripts/netns.sh, removed on exit even on failure).
# Without root, or without `ip netns`, it says so and runs the same nodes on 127.0.0.1 with
# static peers instead. Nothing leaves the machine either way.
#
# Usage: scripts/demo.sh [--loopback]
set -euo pipefail
cd "$(dirname "$0")/.."

mode=netns
[[ "${1:-}" == "--loopback" ]] && mode=loopback

echo "building the demo (debug build)..."
cargo build --quiet -p shoal --bin shoal -p shoal-examples --example demo
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
prefix="shoaldemo$$"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ $mode == netns ]]; then scripts/netns.sh down "$prefix" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $mode == netns ]]; then
    if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null; then
        echo "cannot create network namespaces (needs root and iproute2): running on loopback with static peers"
        mode=loopback
    elif ! scripts/netns.sh up 4 "$prefix" >/dev/null; then
        echo "creating network namespaces failed: running on loopback with static peers"
        mode=loopback
    fi
fi

"$bin/shoal" ca init --dir "$work/ca" >/dev/null

# host index, service, services it talks to, and its events: orders publishes order.created
# (once both subscriber groups are known), invoice and shipping subscribe to order.*.
nodes=("0 orders invoice,shipping" "1 invoice " "2 invoice " "3 shipping invoice")

start() {
    local i=$1 service=$2 talk=$3
    local args=(--service "$service" --ca "$work/ca" --rounds 3 --linger-ms 4000)
    for t in ${talk//,/ }; do args+=(--talk-to "$t"); done
    if [[ $service == orders ]]; then
        args+=(--publish order.created --audiences 2)
    else
        args+=(--subscribe 'order.*')
    fi
    if [[ $mode == netns ]]; then
        args+=(--label "$prefix-h$i" --listen 0.0.0.0:7000 --mdns lan0)
        ip netns exec "$prefix-h$i" timeout 60 "$bin/examples/demo" "${args[@]}" &
    else
        args+=(--label "loopback:710$i" --listen "127.0.0.1:710$i")
        for j in 0 1 2 3; do [[ $j != "$i" ]] && args+=(--peer "127.0.0.1:710$j"); done
        timeout 60 "$bin/examples/demo" "${args[@]}" &
    fi
    pids+=($!)
}

if [[ $mode == netns ]]; then
    echo "LAN: 4 hosts ${prefix}-h0..h3 (10.99.0.1-4 on lan0) joined by a bridge; discovery by mDNS on lan0"
else
    echo "loopback: 4 nodes on 127.0.0.1:7100-7103 with static peers"
fi
for n in "${nodes[@]}"; do
    read -r i service talk <<<"$n"
    start "$i" "$service" "${talk:-}"
done

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
pids=()
if [[ $status == 0 ]]; then echo "demo finished: every node exchanged its messages"; else echo "demo failed" >&2; fi
exit $status
