#!/usr/bin/env bash
# Benchmark 2 of issue 5 with pgpool-II in the comparison: starts a local primary +
# 2 streaming replicas (`rwsplit cluster up`), pgpool-II in front of them (its own
# config, in a temp dir, on a free port), runs examples/bench_read_throughput.rs with
# PRIMARY_URL, REPLICA_URLS and PGPOOL_URL, then stops pgpool and the cluster.
#
#   bench/pgpool/run.sh [TASKS SECONDS ROUNDS READS_PER_CHECKOUT]
#
# Needs pgpool-II 4.x on PATH (Debian/Ubuntu: apt-get install -y pgpool2; the
# package's own service is not used). Honours CARGO_TARGET_DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
tasks=${1:-32}

pgpool_bin=$(command -v pgpool || true)
if [ -z "$pgpool_bin" ]; then
    echo "pgpool not found (apt-get install -y pgpool2); without it run:" >&2
    echo "  cargo run --release --example bench_read_throughput" >&2
    exit 1
fi

cargo build --release --features cli --bin rwsplit --example bench_read_throughput
rwsplit="$target/release/rwsplit"
bench="$target/release/examples/bench_read_throughput"

work=$(mktemp -d /tmp/rws-pgpool-XXXXXX)
pgpool_pid=""
RWSPLIT_CLUSTER_DIR=""
cleanup() {
    if [ -n "$pgpool_pid" ] && kill -0 "$pgpool_pid" 2>/dev/null; then
        kill -INT "$pgpool_pid" 2>/dev/null || true # fast shutdown
        for _ in $(seq 50); do kill -0 "$pgpool_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -n "$RWSPLIT_CLUSTER_DIR" ]; then
        "$rwsplit" cluster down --dir "$RWSPLIT_CLUSTER_DIR" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

eval "$("$rwsplit" cluster up --replicas 2)"
export PRIMARY_URL REPLICA_URLS
port_of() { sed -E 's#^.*:([0-9]+)/[^/]*$#\1#' <<<"$1"; }
primary_port=$(port_of "$PRIMARY_URL")
replica1_port=$(port_of "${REPLICA_URLS%%,*}")
replica2_port=$(port_of "${REPLICA_URLS##*,}")

# A free TCP port on the loopback address.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
pcp_port=$(free_port)

sed -e "s#@DIR@#$work#g" -e "s#@PORT@#$port#g" -e "s#@PCP_PORT@#$pcp_port#g" \
    -e "s#@PRIMARY_PORT@#$primary_port#g" -e "s#@REPLICA1_PORT@#$replica1_port#g" \
    -e "s#@REPLICA2_PORT@#$replica2_port#g" -e "s#@CHILDREN@#$((tasks + 8))#g" \
    "$here/pgpool.conf.in" >"$work/pgpool.conf"
: >"$work/pcp.conf"
: >"$work/pool_hba.conf"

"$pgpool_bin" -n -f "$work/pgpool.conf" -F "$work/pcp.conf" -a "$work/pool_hba.conf" >"$work/pgpool.log" 2>&1 &
pgpool_pid=$!
export PGPOOL_URL="postgres://postgres@127.0.0.1:$port/postgres"
for i in $(seq 100); do
    if psql "$PGPOOL_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then break; fi
    if ! kill -0 "$pgpool_pid" 2>/dev/null || [ "$i" = 100 ]; then
        echo "pgpool did not come up; its log:" >&2
        cat "$work/pgpool.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "pgpool-II $("$pgpool_bin" --version 2>&1 | sed 's/^pgpool-II version //') on port $port:" \
    "primary $primary_port (weight 0), replicas $replica1_port and $replica2_port"

"$bench" "$@"
