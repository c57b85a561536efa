#!/usr/bin/env bash
# The load generator's own cost and precision, and whether it disturbs what
# it measures. Writes bench/results/<date>-pacing-<machine>.md.
#
#   bench/pacing.sh            # REPEATS=3 rounds of every measurement
#
# 1. Generator CPU (getrusage) and send lateness at 2,000 and 50,000 req/s,
#    with the default pacing and with --pacing spin: server on core 0,
#    generator on core 1.
# 2. The default server and the default generator on the same machine,
#    unpinned, at 2,000 req/s, against the same pair pinned to separate cores,
#    alternating in one run: the p99 ratio.
# 3. What lb's default of two workers costs on this machine against one
#    worker, both unpinned: p50 and p99 at 2,000 req/s, closed-loop peak, and
#    server CPU per request.
# Environment: REPEATS, DURATION (5s), BIN, NAME, MACHINE.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-5s}
[ -x "$BIN/ramkv-server" ] && [ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-pacing-$machine}
md="bench/results/$name.md"
port=17900
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT

# start CPUS ARGS...: a server on CPUS ("" for unpinned); sets pid and addr.
start() {
  local cpus=$1; shift
  port=$((port + 1)); addr="127.0.0.1:$port"
  if [ -n "$cpus" ]; then
    taskset -c "$cpus" "$BIN/ramkv-server" --listen "$addr" --log-level warn "$@" >/dev/null &
  else
    "$BIN/ramkv-server" --listen "$addr" --log-level warn "$@" >/dev/null &
  fi
  pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
# gen CPUS ARGS...: ramkv-bench against the server, JSON on stdout (a run of
# DURATION unless ARGS say otherwise).
gen() {
  local cpus=$1; shift
  local cmd=("$BIN/ramkv-bench" --target "ramkv://$addr" --quiet --json "$@")
  if [ -n "$cpus" ]; then taskset -c "$cpus" "${cmd[@]}"; else "${cmd[@]}"; fi
}
# Fields of a JSON line, space-separated, each with 3 significant digits.
fields() { python3 -c '
import json, sys
v = json.loads(sys.stdin.read())
print(" ".join("-" if v[k] is None else f"{v[k]:.3g}" for k in sys.argv[1:]))' "$@"; }
server_cpu_us() { "$BIN/ramkv" --server "$addr" stats | awk '$1 == "ramkv_process_cpu_us_total" { print $2 }'; }
server_requests() { "$BIN/ramkv" --server "$addr" stats | awk '$1 ~ /^ramkv_requests_total/ { r += $2 } END { print r }'; }

{
  echo "# The generator's cost and precision, and what it disturbs"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); server \`$("$BIN/ramkv-server" --version)\`"
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)"
  echo "- Command: \`bench/pacing.sh\` (REPEATS=$REPEATS, DURATION=$DURATION per run); default generator flags unless shown"
  echo
  echo "## 1. Generator CPU and send lateness (server on core 0, generator on core 1)"
  echo
  echo "| rate | pacing | round | generator CPU (cores) | on time (≤ 50 µs) | lateness p50 / p99 / p99.9 µs | latency p50 / p99 µs |"
  echo "|---:|---|---:|---:|---:|---|---|"
} > "$md"
start 0
gen 1 --preset uniform --keys 10000 --preload --rate 1000 --duration 1s >/dev/null
for r in $(seq "$REPEATS"); do
  for rate in 2000 50000; do
    for pacing in sleep spin; do
      read -r cpu adh l50 l99 l999 p50 p99 < <(gen 1 --preset uniform --keys 10000 --rate "$rate" --pacing "$pacing" --duration "$DURATION" \
        | fields generator_cpu adherence late_p50_us late_p99_us late_p999_us p50_us p99_us)
      echo "| $rate | $pacing | $r | $cpu | $adh | $l50 / $l99 / $l999 | $p50 / $p99 |" >> "$md"
    done
  done
done
stop

{
  echo
  echo "## 2. Default server and generator sharing the machine, against pinned apart (2,000 req/s)"
  echo
  echo "| round | unpinned p50 / p99 µs | on time | pinned apart p50 / p99 µs | on time | p99 ratio (unpinned / pinned) |"
  echo "|---:|---|---:|---|---:|---:|"
} >> "$md"
for r in $(seq "$REPEATS"); do
  start ""
  read -r u50 u99 uadh < <(gen "" --rate 2000 --duration "$DURATION" | fields p50_us p99_us adherence)
  stop
  start 0
  read -r p50 p99 padh < <(gen 1 --rate 2000 --duration "$DURATION" | fields p50_us p99_us adherence)
  stop
  ratio=$(awk -v a="$u99" -v b="$p99" 'BEGIN { printf "%.2f", a / b }')
  echo "| $r | $u50 / $u99 | $uadh | $p50 / $p99 | $padh | $ratio |" >> "$md"
done

{
  echo
  echo "## 3. lb's default of two workers against one, on this machine (both unpinned)"
  echo
  echo "| round | workers | p50 / p99 µs at 2,000 req/s | server CPU µs / request at 2,000 req/s | closed-loop peak (req/s) |"
  echo "|---:|---|---|---:|---:|"
} >> "$md"
for r in $(seq "$REPEATS"); do
  for workers in 1 default; do
    extra=(); [ "$workers" = default ] || extra=(--workers "$workers")
    start "" ${extra[@]+"${extra[@]}"}
    c0=$(server_cpu_us); q0=$(server_requests)
    read -r l50 l99 < <(gen "" --rate 2000 --duration "$DURATION" | fields p50_us p99_us)
    c1=$(server_cpu_us); q1=$(server_requests)
    peak=$(gen "" --preset uniform --keys 10000 --preload --concurrency 4 --connections 16 --duration 3s | fields achieved_rate)
    stop
    per=$(awk -v c=$((c1 - c0)) -v q=$((q1 - q0)) 'BEGIN { printf "%.1f", c / q }')
    echo "| $r | $workers | $l50 / $l99 | $per | $peak |" >> "$md"
  done
done
echo "wrote $md" >&2
