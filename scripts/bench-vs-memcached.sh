#!/usr/bin/env bash
# Compare `k2hdkc server --storage memory` with Debian's memcached on this machine, with the
# `k2hdkc bench` load generator on the same cores: ops/s, latency, and server CPU per operation
# (from /proc/PID/stat). Runs the servers one after another: k2hdkc in memory mode (memcached
# text protocol, then the native protocol), k2hdkc in file mode with fsync=batch, and memcached.
# Usage: scripts/bench-vs-memcached.sh [SECONDS] (per scenario; default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
k2=target/release/k2hdkc
[ -x "$k2" ] || cargo build --release -p k2hdkc-cli
command -v memcached >/dev/null || { echo "install memcached (apt-get install memcached)" >&2; exit 1; }
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{print ($14+$15)/t}' "/proc/$1/stat"; }
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
run() { # name port protocol cmd...
    local name=$1 port=$2 proto=$3; shift 3
    "$@" & local pid=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    # Preload and warm up.
    "$k2" bench 127.0.0.1:$port --protocol "$proto" --keys 100000 --duration 1 -c 1 -p 16 >/dev/null 2>&1 || true
    for ratio in 1:10 1:1; do
        for sc in "1 16" "50 16" "1 1"; do
            set -- $sc
            local c0; c0=$(cpu $pid)
            local out; out=$("$k2" bench 127.0.0.1:$port --protocol "$proto" --no-preload --keys 100000 -c $1 -p $2 --ratio $ratio --duration "$secs" --json 2>/dev/null)
            local c1; c1=$(cpu $pid)
            python3 - "$name" "$1x$2" "$ratio" "$c0" "$c1" "$out" <<'PY'
import json, sys
name, sc, ratio, c0, c1, out = sys.argv[1:]
r = json.loads(out)
cpu = float(c1) - float(c0)
print(f"{name:16} set:get {ratio:5} conns x depth {sc:6} {r['ops_per_sec']:>10.0f} ops/s  p50 {r['latency_us']['p50']:>6} us  p99 {r['latency_us']['p99']:>6} us  server CPU {cpu:6.2f} s = {cpu/r['ops']*1e6:5.2f} us/op ({r['ops']/max(cpu,1e-9)/1000:6.0f}k ops per server-core-second)")
PY
        done
    done
    kill $pid; wait $pid 2>/dev/null || true
}
run k2hdkc-memory 21211 memcached "$k2" server --storage memory --memcached-listen 127.0.0.1:21211
run memcached-1.6 21212 memcached memcached -u nobody -U 0 -l 127.0.0.1 -p 21212 -m 1024 -t 2
run k2hdkc-native 21213 native "$k2" server --storage memory --native-listen 127.0.0.1:21213
run k2hdkc-file 21214 memcached "$k2" server --storage file --fsync batch --data-dir "$data/file" --memcached-listen 127.0.0.1:21214
