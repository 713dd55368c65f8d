#!/usr/bin/env bash
# Runs Shoal's whole test suite: unit, property, integration (real sockets on 127.0.0.1) and
# discovery tests (mDNS inside network namespaces this script's tests create themselves).
#
# Installs what the tests need on a fresh Debian machine (iproute2 for `ip netns`; dnsmasq-base
# for the DNS-SD tests; nftables and tcpdump to drop and capture packets in namespaces;
# python3-prometheus-client for
# its OpenMetrics parser; the official AsyncAPI parser, @asyncapi/parser, from npm into scripts/asyncapi/; Debian's postgresql for the
# PostgreSQL outbox) and starts a throwaway PostgreSQL cluster on a free loopback port
# (scripts/pg-cluster.sh), stopped and removed at the end even on failure. Namespace tests need
# root; tests that need what is missing print "skipped: ..." and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ip >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing iproute2 (for network-namespace tests)"
        apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
    else
        echo "note: iproute2 missing and cannot be installed; namespace tests will be skipped"
    fi
fi

# dnsmasq, the real DNS server the DNS-SD tests serve records from (discovery/tests/dns_sd.rs;
# only the binary: dnsmasq-base starts no system service). It runs only inside the tests' own
# network namespaces.
if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing dnsmasq-base (for the DNS-SD tests)"
        apt-get update -qq && apt-get install -y -qq dnsmasq-base >/dev/null ||
            echo "note: dnsmasq-base could not be installed; the DNS-SD tests will be skipped"
    else
        echo "note: dnsmasq missing and cannot be installed; the DNS-SD tests will be skipped"
    fi
fi
export PATH="$PATH:/usr/sbin"

# nftables, to drop chosen packets inside a test's own namespace (this kernel has no netem):
# discovery/tests/mdns_lan.rs drops a newcomer's multicast to show its unicast introduction,
# tests/tests/multicast_lan.rs makes a lossy LAN and blocks multicast. tcpdump captures the
# bridge of a test's own LAN (tests/tests/multicast_lan.rs: no payload in clear).
for tool in nft:nftables tcpdump:tcpdump; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing ${tool#*:} (for the namespace tests that drop or capture packets)"
            apt-get update -qq && apt-get install -y -qq --no-install-recommends "${tool#*:}" >/dev/null ||
                echo "note: ${tool#*:} could not be installed; the tests that need it will be skipped"
        else
            echo "note: ${tool%%:*} missing and cannot be installed; the tests that need it will be skipped"
        fi
    fi
done

# Prometheus's Python client, whose strict OpenMetrics parser checks the metrics endpoint's
# text (node/tests/metrics.rs). Debian's package: no pip into the system Python.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1 &&
    ! /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing python3-prometheus-client (for the OpenMetrics parser check)"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-prometheus-client >/dev/null ||
            echo "note: python3-prometheus-client could not be installed; the OpenMetrics parser check will be skipped"
    else
        echo "note: prometheus_client missing and cannot be installed; the OpenMetrics parser check will be skipped"
    fi
fi

# The official AsyncAPI parser, for the test that checks the documents Shoal writes
# (node/tests/asyncapi_parser.rs). Pinned in scripts/asyncapi/package-lock.json; install scripts
# are not run (one dependency's only sends usage statistics).
if [ ! -d scripts/asyncapi/node_modules/@asyncapi/parser ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "installing @asyncapi/parser (npm ci in scripts/asyncapi)"
        (cd scripts/asyncapi && SCARF_ANALYTICS=false npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
            echo "note: npm ci failed; the AsyncAPI parser test will be skipped"
    else
        echo "note: npm missing; the AsyncAPI parser test will be skipped"
    fi
fi

log=$(mktemp)
pgdir=$(mktemp -d)
trap 'scripts/pg-cluster.sh stop "$pgdir"; rm -f "$log"' EXIT
if url=$(scripts/pg-cluster.sh start "$pgdir"); then
    echo "PostgreSQL test cluster at $url"
    export SHOAL_TEST_PG_URL="$url" SHOAL_TEST_PG_DIR="$pgdir"
else
    echo "note: no PostgreSQL test cluster; the PostgreSQL outbox tests will be skipped"
fi
status=0
cargo test --workspace --no-fail-fast --features shoal-discovery/netns,shoal/contracts,shoal/postgres,shoal/testing,shoal/metrics,shoal/opentelemetry "$@" 2>&1 | tee "$log" || status=$?

# One closing line for the whole run: cargo prints one "test result" line per test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?/) p += $(i-1);
                                               if ($(i) ~ /^failed;?/) f += $(i-1);
                                               if ($(i) ~ /^ignored;?/) g += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, g }' "$log"
exit "$status"
