#!/usr/bin/env bash
# A LAN of Linux network namespaces for demos and manual tests: the same layout as the Rust
# helper `shoal_discovery::netns::Lan` (feature `netns`), so either can clean up after the other.
#
#   PREFIX-h0 .. PREFIX-h<N-1>   host namespaces: lo (up, multicast), lan0 = 10.99.0.<i+1>/24
#   PREFIX-br                    bridge namespace: br0 (no multicast snooping), ports v0..v<N-1>
#
# Nothing is added to the root namespace: both ends of each veth pair are created inside
# namespaces, and the 10.99.0.0/24 addresses exist only in the host namespaces. IPv6 is off in
# all of them. Needs root.
#
# Usage:
#   scripts/netns.sh up N PREFIX        build the LAN (N hosts, 1..250)
#   scripts/netns.sh down PREFIX        delete every namespace named PREFIX-br / PREFIX-h<digits>
#   scripts/netns.sh list [PREFIX]      list namespaces (of PREFIX)
#   scripts/netns.sh exec PREFIX I CMD  run CMD in host I (ip netns exec PREFIX-hI CMD...)
#
# Teardown: if `up` fails half-way, an ERR/INT/TERM trap runs `down PREFIX`, so nothing is left
# behind. A successful `up` leaves the LAN in place (that is its purpose); remove it with
# `down PREFIX`, which is idempotent and safe to run at any time, e.g. from a demo's
# `trap 'scripts/netns.sh down demo' EXIT`.
set -euo pipefail

readonly HOST_IF=lan0
readonly BRIDGE_IF=br0
readonly MAX_HOSTS=250

usage() {
    sed -n '12,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "netns.sh: $*" >&2
    exit 1
}

check_prefix() {
    [[ "$1" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}$ ]] || die "bad prefix '$1' (letters, digits, _ . -)"
}

# Namespaces belonging to PREFIX, one per line.
members() {
    local prefix=$1
    ip netns list | awk '{print $1}' | grep -E "^${prefix//./\\.}-(br|h[0-9]+)\$" || true
}

cmd_down() {
    local prefix=$1 ns failed=0
    check_prefix "$prefix"
    # Hosts first (deleting a host also removes its veth pair), then the bridge.
    for ns in $(members "$prefix" | sort -r); do
        if ip netns del "$ns" 2>/dev/null; then
            echo "deleted $ns"
        else
            echo "could not delete $ns" >&2
            failed=1
        fi
    done
    return "$failed"
}

cmd_up() {
    local n=$1 prefix=$2 br i host
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_HOSTS)) || die "N must be 1..$MAX_HOSTS"
    check_prefix "$prefix"
    [[ -z "$(members "$prefix")" ]] || die "namespaces with prefix '$prefix' exist already (run: $0 down $prefix)"
    ((EUID == 0)) || die "needs root"

    # From here on, any failure or interruption removes what was built.
    trap 'echo "netns.sh: setup failed, tearing down $prefix" >&2; cmd_down "$prefix" >/dev/null || true' ERR
    trap 'cmd_down "$prefix" >/dev/null || true; exit 130' INT TERM

    br="$prefix-br"
    ip netns add "$br"
    ip netns exec "$br" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$br" link set lo up
    ip -n "$br" link add "$BRIDGE_IF" type bridge mcast_snooping 0
    ip -n "$br" link set "$BRIDGE_IF" up

    for ((i = 0; i < n; i++)); do
        host="$prefix-h$i"
        ip netns add "$host"
        ip netns exec "$host" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$host" link set lo multicast on
        ip -n "$host" link set lo up
        ip -n "$host" link add "$HOST_IF" type veth peer name "v$i" netns "$br"
        ip -n "$br" link set "v$i" master "$BRIDGE_IF"
        ip -n "$br" link set "v$i" up
        ip -n "$host" addr add "10.99.0.$((i + 1))/24" dev "$HOST_IF"
        ip -n "$host" link set "$HOST_IF" multicast on
        ip -n "$host" link set "$HOST_IF" up
    done

    # Wait (bounded: 3 s) until every lan0 is running, as mDNS ignores interfaces that are not.
    for ((i = 0; i < n; i++)); do
        host="$prefix-h$i"
        for ((try = 0; ; try++)); do
            ip -n "$host" link show "$HOST_IF" | grep -q 'LOWER_UP' && break
            ((try < 300)) || die "$host: $HOST_IF did not come up"
            sleep 0.01
        done
    done

    trap - ERR INT TERM
    echo "LAN $prefix up: $n hosts ($prefix-h0 .. $prefix-h$((n - 1)), 10.99.0.1 .. 10.99.0.$n), bridge $br"
}

cmd_list() {
    if (($# == 1)); then
        check_prefix "$1"
        members "$1"
    else
        ip netns list
    fi
}

cmd_exec() {
    local prefix=$1 i=$2
    shift 2
    check_prefix "$prefix"
    [[ "$i" =~ ^[0-9]+$ ]] || die "host index must be a number"
    (($# > 0)) || die "no command"
    exec ip netns exec "$prefix-h$i" "$@"
}

(($# >= 1)) || usage
command=$1
shift
case "$command" in
    up) (($# == 2)) || usage; cmd_up "$1" "$2" ;;
    down) (($# == 1)) || usage; cmd_down "$1" ;;
    list) (($# <= 1)) || usage; cmd_list "$@" ;;
    exec) (($# >= 3)) || usage; cmd_exec "$@" ;;
    *) usage ;;
esac
