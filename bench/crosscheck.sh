#!/usr/bin/env bash
# Cross-checks ramkv-bench against load tools nobody here wrote, each pair
# side by side on the same server (server on core 0, clients on core 1):
#   - redis-benchmark and ramkv-bench on one Redis: GET, 1 and 50 connections,
#     one request outstanding on each (closed loop); p50 and mean.
#   - sockperf ping-pong (against sockperf's server) and ramkv-bench's echo
#     target (against its own echo server): the loopback round-trip floor.
#   - memaslap (Debian's libmemcached-tools, as memcaslap) and ramkv-bench on
#     one memcached: 90% GET, 64-byte keys, 100-byte values, one connection.
#
#   bench/crosscheck.sh [REPEATS]      (default 3; needs redis-server,
#                                       redis-benchmark, sockperf, memcached, memcaslap)
# Prints a markdown table: the median of the repeats [min, max] per tool and
# the ratio ramkv-bench / other tool.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
BIN=${BIN:-target/release}
[ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
for tool in redis-server redis-benchmark sockperf memcached memcaslap; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install redis-server sockperf memcached libmemcached-tools)" >&2; exit 2; }
done
S="taskset -c ${SERVER_CPUS:-0}"
C="taskset -c ${CLIENT_CPUS:-1}"
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

$S redis-server --port 17501 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
$S sockperf server -i 127.0.0.1 -p 17502 --tcp >/dev/null 2>&1 & pids+=($!)
$S "$BIN/ramkv-bench" --echo-server 127.0.0.1:17503 >/dev/null & pids+=($!)
mc_user=(); [ "$(id -u)" -ne 0 ] || mc_user=(-u root)
$S memcached -l 127.0.0.1 -p 17504 -U 0 -t 1 "${mc_user[@]}" & pids+=($!)
for p in 17501 17502 17503 17504; do wait_port $p; done
printf 'key\n64 64 1\nvalue\n100 100 1\ncmd\n0 0.1\n1 0.9\n' >"$dir/memaslap.cfg"

ours() { # target, extra flags...: prints "p50 mean" in µs
  local t=$1; shift
  $C "$BIN/ramkv-bench" --target "$t" --concurrency 1 --duration 3s --warmup 1s --json --quiet "$@" 2>/dev/null |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["p50_us"], v["mean_us"])'
}
out="$dir/rows"
for rep in $(seq "$reps"); do
  for c in 1 50; do
    n=$((c == 1 ? 60000 : 300000))
    # redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    theirs=$($C redis-benchmark -p 17501 -t get -c "$c" -n "$n" -r 100000 -d 100 --csv 2>/dev/null |
      awk -F'"' '/^"GET"/ { printf "%.1f %.1f", $10 * 1000, $6 * 1000 }')
    echo "redis GET c=$c|redis-benchmark|$theirs|$(ours redis://127.0.0.1:17501 --connections "$c" --get-ratio 1 --keys 100000 --value-size 100)" >>"$out"
  done
  # sockperf: p50 and the average of full round trips, 16-byte messages.
  theirs=$($C sockperf ping-pong -i 127.0.0.1 -p 17502 --tcp -t 3 -m 16 --full-rtt 2>&1 |
    sed 's/\x1b\[[0-9;]*m//g' | awk '/percentile 50.000/ { p = $NF } /avg-rtt=/ { sub(/.*avg-rtt=/, ""); m = $1 } END { print p, m }')
  echo "loopback round trip|sockperf|$theirs|$(ours echo://127.0.0.1:17503 --connections 1)" >>"$out"
  # memaslap prints Total Statistics ... Geo: and Avg: in µs.
  theirs=$($C memcaslap -s 127.0.0.1:17504 -T 1 -c 1 -t 3s -F "$dir/memaslap.cfg" -S 3s 2>/dev/null |
    awk '/^Total Statistics/ { t = 1 } t && /Avg:/ { a = $2 } t && /Geo:/ { g = $2 } END { print g, a }')
  echo "memcached 90% GET c=1|memaslap (p50 column: geometric mean)|$theirs|$(ours memcache://127.0.0.1:17504 --connections 1 --get-ratio 0.9 --key-size 64 --value-size 100 --keys 10000 --preload)" >>"$out"
  echo "rep $rep done" >&2
done

python3 - "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    what, tool, theirs, ours = line.rstrip("\n").split("|")
    t, o = [float(x) for x in theirs.split()], [float(x) for x in ours.split()]
    r = rows.setdefault((what, tool), [])
    r.append((t, o))
def cell(v):
    v = sorted(v)
    return f"{statistics.median(v):.1f} [{v[0]:.1f}, {v[-1]:.1f}]"
print("| workload | other tool | its p50 µs | ramkv-bench p50 µs | p50 ratio | its mean µs | ramkv-bench mean µs | mean ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for (what, tool), runs in rows.items():
    tp = [t[0] for t, _ in runs]; op = [o[0] for _, o in runs]
    tm = [t[1] for t, _ in runs]; om = [o[1] for _, o in runs]
    print(f"| {what} | {tool} | {cell(tp)} | {cell(op)} | {statistics.median(op) / statistics.median(tp):.2f} | "
          f"{cell(tm)} | {cell(om)} | {statistics.median(om) / statistics.median(tm):.2f} |")
PY
