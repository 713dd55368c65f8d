#!/usr/bin/env bash
# The order-flow example with `orders` as two instances on PostgreSQL, relaying by tailing the
# transaction log, on a throwaway cluster (scripts/pg-cluster.sh) removed at the end. Extra
# arguments go to the example (e.g. --orders 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=$(mktemp -d)
trap 'scripts/pg-cluster.sh stop "$pgdir"' EXIT
url=$(scripts/pg-cluster.sh start "$pgdir")
cargo run -q -p shoal-examples --example order-flow -- --postgres "$url" "$@"
