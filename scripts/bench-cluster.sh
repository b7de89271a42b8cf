#!/usr/bin/env bash
# Throughput and CPU cost of a 3-node k2hdkc cluster (memory mode, N=3 W=2 R=2, a gateway)
# against one node, with the `k2hdkc bench` load generator on the same 2 cores: ops/s, latency,
# and the CPU seconds of every server process (nodes + gateway) per operation.
# Scenarios: one synchronous client (1 connection, depth 1; the load K2HDKC's figures were
# measured with), and 16 connections x depth 8, for set:get 1:0, 1:1 and 1:10 (sets-only for the
# synchronous case too). Every daemon runs THREADS worker threads (default 1: five processes
# share two cores here; `--threads 0` means one per core). Usage: scripts/bench-cluster.sh
# [SECONDS] (default 8). REPLICAS=2 runs the cluster with N=2 (W=R=2) instead of N=3 (W=R=2);
# NO_DIRECT_WRITES=1 runs the gateway with --no-direct-writes (every set through the primary).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
threads=${THREADS:-1}
replicas=${REPLICAS:-3}
k2=${K2HDKC_BIN:-target/release/k2hdkc}
[ -x "$k2" ] || cargo build --release -p k2hdkc-cli
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cpu_of() { local s=0; for p in "$@"; do s=$(awk -v t="$tick" -v s="$s" '{print s+($14+$15)/t}' "/proc/$p/stat"); done; echo "$s"; }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

scenario() { # label port procs... ; uses globals c p ratio
    local label=$1 port=$2; shift 2
    local c0; c0=$(cpu_of "$@")
    local out; out=$("$k2" bench 127.0.0.1:$port --no-preload --keys 100000 -c $c -p $p --ratio $ratio --duration "$secs" --json 2>/dev/null)
    local c1; c1=$(cpu_of "$@")
    python3 - "$label" "$c x $p" "$ratio" "$c0" "$c1" "$out" <<'PY'
import json, sys
label, sc, ratio, c0, c1, out = sys.argv[1:]
r = json.loads(out)
cpu = float(c1) - float(c0)
print(f"{label:22} set:get {ratio:5} conns x depth {sc:7} {r['ops_per_sec']:>9.0f} ops/s  p50 {r['latency_us']['p50']:>6} us  p99 {r['latency_us']['p99']:>6} us  server CPU {cpu:6.2f} s = {cpu/r['ops']*1e6:6.2f} us/op")
PY
}

# One node.
"$k2" server --threads "$threads" --storage memory --memcached-listen 127.0.0.1:21311 >/dev/null 2>&1 & single=$!; pids+=($single)
wait_port 21311
"$k2" bench 127.0.0.1:21311 --keys 100000 --duration 1 -c 1 -p 16 >/dev/null 2>&1 || true
for sc in "1 1 1:0" "1 1 1:1" "16 8 1:0" "16 8 1:1" "16 8 1:10"; do
    set -- $sc; c=$1; p=$2; ratio=$3
    scenario "single node" 21311 $single
done
kill $single; wait $single 2>/dev/null || true

# Three nodes and a gateway.
nodes=()
for i in 1 2 3; do
    "$k2" server --threads "$threads" --name n$i --storage memory --listen 127.0.0.1:$((21400 + 2*i)) --memcached-listen 127.0.0.1:$((21500 + i)) --join 127.0.0.1:21402 >"$work/n$i.log" 2>&1 &
    nodes+=($!); pids+=($!)
done
wait_port 21406
# Memory-mode nodes found a cluster only after listening a moment for an old one: wait until
# all three are in the layout (bounded).
for _ in $(seq 100); do
    "$k2" ctl 127.0.0.1:21402 status --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(len(json.load(sys.stdin)["nodes"]) != 3)' && break
    sleep 0.1
done
"$k2" ctl 127.0.0.1:21402 set-replicas "$replicas" --write-quorum 2 --read-quorum 2 >/dev/null
"$k2" ctl 127.0.0.1:21402 attach --wait >/dev/null 2>&1
"$k2" gateway --threads "$threads" ${NO_DIRECT_WRITES:+--no-direct-writes} --join 127.0.0.1:21402 --memcached-listen 127.0.0.1:21511 --native-listen 127.0.0.1:21512 >"$work/gw.log" 2>&1 & gw=$!; pids+=($gw)
wait_port 21511
sleep 1
"$k2" bench 127.0.0.1:21511 --keys 100000 --duration 1 -c 1 -p 16 >/dev/null 2>&1 || true
for sc in "1 1 1:0" "1 1 1:1" "16 8 1:0" "16 8 1:1" "16 8 1:10"; do
    set -- $sc; c=$1; p=$2; ratio=$3
    scenario "3 nodes N=$replicas via gw" 21511 "${nodes[@]}" $gw
done
for sc in "16 8 1:1"; do
    set -- $sc; c=$1; p=$2; ratio=$3
    scenario "3 nodes N=$replicas via n1" 21501 "${nodes[@]}"
done
