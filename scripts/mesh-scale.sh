#!/usr/bin/env bash
# Measures a mesh of N `shoal serve` nodes (N services, one instance each) in ONE network
# namespace this script creates, with mDNS on that namespace's `lo`: how long until every node
# has discovered every other service, and then, with no traffic, CPU, memory, mDNS packets and
# connections. Finally a client sends to K services and the script counts the connections that
# made. Nothing runs outside the namespace; every wait is bounded; the namespace and every
# process started are removed on exit. Needs root and iproute2.
#
# Usage: scripts/mesh-scale.sh [N] [SHOAL_BIN] [-- extra `shoal serve` flags]
#   N          nodes (default 200, at most 1000)
#   SHOAL_BIN  the shoal binary (default target/release/shoal; build it with
#              `cargo build --release -p shoal --bin shoal`)
# Environment: IDLE_SECS (measuring window, default 120: it spans one refresh of mdns-sd's
# 120 s host records), K (services the client talks to, default 3), SETTLE_SECS (wait after
# convergence before measuring, default 5).
#
# Prints one Markdown table row, and on stderr the UDP datagrams the kernel dropped at full
# receive buffers until convergence (mDNS daemons that could not keep up):
# | N | discovered every service after (p50 / max, from the last start) | idle CPU, whole mesh
# | RSS per node (median / max) | packets on lo per node per minute (mDNS: no connection is open)
# | connections when idle | connections after the client talked to K services |
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-200}
bin=${2:-target/release/shoal}
shift $(($# < 2 ? $# : 2))
[ "${1:-}" = "--" ] && shift
extra=("$@")
idle_secs=${IDLE_SECS:-120}
settle_secs=${SETTLE_SECS:-5}
k=${K:-3}

die() { echo "mesh-scale: $*" >&2; exit 1; }
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 1000 ] || die "N must be 2..1000"
[ "$(id -u)" = 0 ] || { echo "skipped: mesh-scale needs root (network namespaces)"; exit 0; }
command -v ip >/dev/null || { echo "skipped: iproute2 (ip) is missing"; exit 0; }
[ -x "$bin" ] || die "no shoal binary at $bin (cargo build --release -p shoal --bin shoal)"
bin=$(realpath "$bin")

ns="shoal-scale-$$"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip -n "$ns" link set lo up
"$bin" ca init --dir "$work/ca" >/dev/null
for i in $(seq 0 $((n - 1))); do
    "$bin" cert issue --ca "$work/ca" --service "svc$i" >/dev/null
done

now_ms() { date +%s%3N; }
for i in $(seq 0 $((n - 1))); do
    # `ip netns exec` execs the command: $! is the node's own pid.
    # At nice 10: on a 2-core machine 200 nodes starting at once take every CPU, and the
    # loop below, which measures them, must still run when they are done.
    ip netns exec "$ns" nice -n 10 "$bin" serve --ca "$work/ca" --service "svc$i" --mdns lo \
        "${extra[@]}" >"$work/node$i.log" 2>"$work/node$i.err" &
    pids+=($!)
done
last_start=$(now_ms)

# Each node's time to discover all N-1 other services, polled every 50 ms (at most 120 s).
# One awk reads every log per poll: a process per node and poll would itself take seconds
# per round at N=200 on 2 cores, and those seconds would be counted as convergence.
declare -a done_at=()
converged=0
deadline=$((last_start + 120000))
while [ "$converged" -lt "$n" ] && [ "$(now_ms)" -lt "$deadline" ]; do
    t=$(now_ms)
    while read -r i; do
        [ -n "${done_at[$i]:-}" ] && continue
        done_at[$i]=$((t - last_start))
        converged=$((converged + 1))
    done < <(awk -v want=$((n - 1)) '
        /^discovered / { f = FILENAME; sub(/.*node/, "", f); sub(/\.log$/, "", f)
                         if (!((f, $4) in seen)) { seen[f, $4] = 1; count[f]++ } }
        END { for (f in count) if (count[f] >= want) print f }' "$work"/node*.log)
    sleep 0.05
done
# Datagrams the kernel dropped because a socket's receive buffer was full (UDP RcvbufErrors
# in the namespace): mDNS daemons that cannot keep up with the link lose announcements.
rcvbuf_errors() { ip netns exec "$ns" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
echo "UDP datagrams dropped at full receive buffers until convergence: $(rcvbuf_errors)" >&2
[ "$converged" -eq "$n" ] || die "only $converged of $n nodes discovered every service within 120 s"
times=$(printf '%s\n' "${done_at[@]}" | sort -n)
p50=$(echo "$times" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$times" | tail -1)

sleep "$settle_secs"
ticks() { # user+system CPU ticks of every node
    local sum=0 pid
    for pid in "${pids[@]}"; do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$sum"
}
lo_packets() { ip -n "$ns" -s -j link show lo | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'; }
cpu0=$(ticks); pk0=$(lo_packets); t0=$(now_ms)
sleep "$idle_secs"
cpu1=$(ticks); pk1=$(lo_packets); t1=$(now_ms)
hz=$(getconf CLK_TCK)
cpu=$(awk -v d=$((cpu1 - cpu0)) -v hz="$hz" -v ms=$((t1 - t0)) 'BEGIN {printf "%.1f%%", 100 * d / hz / (ms / 1000)}')
pkts=$(awk -v d=$((pk1 - pk0)) -v n="$n" -v ms=$((t1 - t0)) 'BEGIN {printf "%.1f", d / n * 60000 / ms}')
rss=$(for pid in "${pids[@]}"; do awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; done | sort -n)
rss_med=$(echo "$rss" | awk '{a[NR]=$1} END {printf "%.1f MB", a[int((NR+1)/2)] / 1024}')
rss_max=$(echo "$rss" | tail -1 | awk '{printf "%.1f MB", $1 / 1024}')
ups() { cat "$work"/node*.log | grep -c '^peer up' || true; }
idle_conns=$(ups)

# A client talks to K services: K connections appear, not N-1.
before=$(ups)
for i in $(seq 0 $((k - 1))); do
    timeout 30 ip netns exec "$ns" "$bin" send --ca "$work/ca" --mdns lo --service "svc$i" \
        --name print --payload hi --wait 10000 >/dev/null
done
after=$(ups)

echo "| N | discovered all, p50 / max | idle CPU (whole mesh) | RSS per node, median / max | lo packets per node per minute | connections idle | connections after talking to $k |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '| %s | %.2f s / %.2f s | %s | %s / %s | %s | %s | %s |\n' "$n" \
    "$(awk -v v="$p50" 'BEGIN {print v / 1000}')" "$(awk -v v="$max" 'BEGIN {print v / 1000}')" \
    "$cpu" "$rss_med" "$rss_max" "$pkts" "$idle_conns" "$((after - before))"
