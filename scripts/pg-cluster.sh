#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1, for the PostgreSQL outbox's tests, benchmark and
# example. Nothing else on the machine is touched; everything lives in one folder.
#
#   scripts/pg-cluster.sh start DIR    initdb in DIR, start on a free loopback port, print the URL
#   scripts/pg-cluster.sh restart DIR  stop at once (as a crash would) and start again, same port
#   scripts/pg-cluster.sh stop DIR     stop the cluster and remove DIR
#
# Installs Debian's `postgresql` when no server is found (as root, with apt-get), without
# creating or starting Debian's own cluster. As root the cluster runs as the `postgres` user
# (initdb refuses root). Settings: wal_level=logical (log tailing), trust authentication on
# loopback only, and fsync=off: a commit survives a crash of PostgreSQL (the kernel has its
# WAL), not a power cut; the same promise as SQLite's WAL with synchronous=NORMAL.
set -euo pipefail

cmd=${1:?usage: pg-cluster.sh start|restart|stop DIR}
dir=${2:?usage: pg-cluster.sh start|restart|stop DIR}

server_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/postgres" ]; then
        echo "$found"
    fi
}

install_server() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "no PostgreSQL server, and cannot install one (needs root and apt-get)" >&2
        return 1
    fi
    echo "installing Debian's postgresql (for the PostgreSQL outbox tests)" >&2
    # Debian would create and start a cluster of its own: not wanted here.
    mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
        echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >&2
}

# Runs a server program as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_server() {
    local bin=$1 port=$2
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
}

case $cmd in
start)
    bin=$(server_bin)
    if [ -z "$bin" ]; then
        install_server
        bin=$(server_bin)
    fi
    [ -n "$bin" ] || { echo "no PostgreSQL server found after installing" >&2; exit 1; }
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    cat >>"$dir/data/postgresql.conf" <<EOF
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 300
fsync = off
full_page_writes = off
EOF
    # A free port: try random ones until the server starts on one.
    for _ in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 30000))
        if start_server "$bin" "$port" 2>/dev/null; then
            echo "$port" >"$dir/port"
            echo "postgres://postgres@127.0.0.1:$port/postgres"
            exit 0
        fi
    done
    echo "PostgreSQL did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
    ;;
restart)
    bin=$(server_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    start_server "$bin" "$(cat "$dir/port")"
    ;;
stop)
    bin=$(server_bin)
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 ||
            as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg-cluster.sh start|restart|stop DIR" >&2
    exit 2
    ;;
esac
