#!/usr/bin/env bash
# Installs what the rival benchmarks need on Debian, so that
#   cargo run --release -p shoal-benches --features rivals -- --scenario all --runs 3
# runs every system. Zenoh and libp2p are plain crates (nothing to install); NATS needs its
# server, ZeroMQ its C library. Idempotent; needs root (or sudo).
set -euo pipefail

packages=(
    nats-server   # NATS: the harness starts `nats-server -a 127.0.0.1 -p <port>` itself
    libzmq3-dev   # ZeroMQ: libzmq, linked by the `zmq` crate through pkg-config
    pkg-config
)

missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-rivals: everything is installed (${packages[*]})"
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-rivals: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
echo "install-rivals: done; nats-server $(nats-server --version 2>/dev/null || /usr/sbin/nats-server --version)"
