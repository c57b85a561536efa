#!/usr/bin/env bash
# GET p50 at low load against the raw loopback TCP ping-pong floor, side by side.
#   bench/latency-floor.sh [SERVER_CPUS] [GEN_CPUS] [REPEATS]
# The echo server, ramkv lb and ramkv inline all run pinned to SERVER_CPUS;
# ramkv-bench runs on GEN_CPUS at 2,000 req/s over one connection. The
# targets alternate within each repeat, so drift hits them alike; a summary
# of the ratios (median [min, max] over the repeats) follows the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
server_cpus=${1:-0}
gen_cpus=${2:-1}
repeats=${3:-3}
BIN=${BIN:-target/release}
[ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
pids=()
ratios=$(mktemp)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "$ratios"' EXIT
taskset -c "$server_cpus" "$BIN/ramkv-bench" --echo-server 127.0.0.1:17901 >/dev/null & pids+=($!)
taskset -c "$server_cpus" "$BIN/ramkv-server" --listen 127.0.0.1:17902 --log-level warn & pids+=($!)
taskset -c "$server_cpus" "$BIN/ramkv-server" --listen 127.0.0.1:17903 --arch inline --log-level warn & pids+=($!)
for port in 17901 17902 17903; do
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
done
echo "| run | target | p50 µs | p99 µs | p50 / echo p50 |"
echo "|---|---|---:|---:|---:|"
for r in $(seq "$repeats"); do
  base=""
  for t in echo://127.0.0.1:17901 ramkv://127.0.0.1:17902 ramkv://127.0.0.1:17903; do
    json=$(taskset -c "$gen_cpus" "$BIN/ramkv-bench" --target "$t" --rate 2000 --connections 1 --duration 3s \
      --warmup 1s --get-ratio 1 --keys 1000 --preload --json 2>/dev/null)
    p50=$(sed -n 's/.*"p50_us":\([^,]*\).*/\1/p' <<<"$json")
    p99=$(sed -n 's/.*"p99_us":\([^,]*\).*/\1/p' <<<"$json")
    [ -n "$base" ] || base=$p50
    case "$t" in echo*) name="echo (ping-pong floor)" ;; *17902) name="ramkv lb" ;; *) name="ramkv inline" ;; esac
    ratio=$(awk -v a="$p50" -v b="$base" 'BEGIN{printf "%.3f", a/b}')
    echo "| $r | $name | $p50 | $p99 | $ratio |"
    echo "$name|$ratio" >>"$ratios"
  done
done
echo
echo "| target | p50 / echo p50: median [min, max] over $repeats runs |"
echo "|---|---:|"
for name in "ramkv lb" "ramkv inline"; do
  grep "^$name|" "$ratios" | cut -d'|' -f2 | sort -n |
    awk -v name="$name" '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "| %s | %.2f [%.2f, %.2f] |\n", name, m, v[1], v[NR] }'
done
