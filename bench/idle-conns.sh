#!/usr/bin/env bash
# Memory per idle connection, and what idle connections do to active ones.
# For each system: the server's resident memory (VmRSS) with one connection,
# then with N more open and idle (each sent one request and read its answer
# first, so buffers a request needs have been taken and should be given
# back); the difference over N is the cost of an idle connection. For ramkv
# systems it then runs the same light open-loop load on 4 connections with
# and without the N idle ones held, alternating, and compares p99.
# Writes bench/results/<date>-idle-conns-<machine>.md.
#
#   bench/idle-conns.sh
#   N=2000 SYSTEMS="lb inline-1" bench/idle-conns.sh
#
# The server runs on core 0, everything else on core 1. N needs N file
# descriptors on each side: the limit (`ulimit -n`) must exceed N + 100.
# thread-per-conn keeps a second descriptor per connection (to shut it down
# from outside its thread), so it gets TPC_N (N / 2) connections.
# Environment: SYSTEMS, N (10000), TPC_N, RATE (2000), DURATION (5s),
# REPEATS (3), NAME, MACHINE, BIN, MEMCACHED, REDIS.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=small
BASE_PORT=17800
N=${N:-10000}
export MEMCACHED_CONNS=$((N + 100)) REDIS_CLIENTS=$((N + 100))
source bench/lib.sh
ramkv_common+=(--max-connections "$((N + 100))")
SYSTEMS=${SYSTEMS:-"lb inline-1 thread-per-conn memcached redis"}
RATE=${RATE:-2000}
DURATION=${DURATION:-5s}
REPEATS=${REPEATS:-3}
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-idle-conns-$machine}
md="bench/results/$name.md"
[ "$(ulimit -n)" -gt $((N + 100)) ] || { echo "idle-conns.sh: ulimit -n is $(ulimit -n); N=$N needs more" >&2; exit 1; }

# hold PROTO COUNT: opens COUNT connections, each sending one request and
# reading its answer, prints "ready", and holds them until stdin closes.
hold() {
  python3 -c '
import socket, sys
proto, host, port, n = sys.argv[1], "127.0.0.1", int(sys.argv[2]), int(sys.argv[3])
# ramkv: a PING frame (id 1); memcached: version; Redis: PING.
req = {"ramkv": bytes([0, 0, 0, 4, 0x08, 0x01, 0x3a, 0x00]), "memcache": b"version\r\n", "redis": b"PING\r\n"}[proto]
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(req)
    if not s.recv(4096):
        sys.exit(f"connection {i} was closed")
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
' "$@"
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
n_of() { case "$1" in thread-per-conn) echo "${TPC_N:-$((N / 2))}" ;; *) echo "$N" ;; esac; }
proto_of() { case "$1" in memcached) echo memcache ;; redis) echo redis ;; *) echo ramkv ;; esac; }
# Starts holding COUNT connections in the background; returns once they are all open.
start_holding() {
  rm -f "$fifo"; mkfifo "$fifo"
  taskset -c "$gen_cpus" bash -c "$(declare -f hold); hold $(proto_of "$sys") $port $1" < "$fifo" > "$fifo.out" &
  holder=$!
  exec 7> "$fifo"
  until grep -q ready "$fifo.out" 2>/dev/null; do
    kill -0 "$holder" 2>/dev/null || { echo "idle-conns.sh: the holder failed" >&2; exit 1; }
    sleep 0.2
  done
}
stop_holding() { exec 7>&-; wait "$holder" || true; }
p99() {
  taskset -c "$gen_cpus" "$BIN/ramkv-bench" --target "$target" --quiet --json --preset uniform --keys 1000 \
    --connections 4 --rate "$RATE" --duration "$DURATION" --warmup 1s 2>>"$md.bench.log" |
    python3 -c 'import json, sys; v = json.loads(sys.stdin.read()); print("%.0f" % v["p99_us"])'
}
fifo=$(mktemp -u /tmp/idle-conns.XXXXXX)

{
  echo "# Memory per idle connection, and idle connections' effect on active ones"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); server: \`$("$BIN/ramkv-server" --version)\`"
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)"
  echo "- Command: \`N=$N RATE=$RATE DURATION=$DURATION REPEATS=$REPEATS SYSTEMS=\"$SYSTEMS\" bench/idle-conns.sh\`"
  echo "- Server on core 0, clients on core 1. Each idle connection first sent one request (ramkv PING, memcached \`version\`, Redis PING) and read the answer."
  echo "- Memory: the server's VmRSS with one connection, then with the idle ones held too; the difference over their number. Kernel socket memory is not in VmRSS and not counted."
  echo "- Active p99: ramkv-bench, uniform preset, 4 connections, $RATE req/s for $DURATION after 1 s warmup, with and without the idle connections, alternating, $REPEATS times each."
  echo
  echo "| system | idle connections | RSS with 1 connection (KiB) | with the idle ones (KiB) | bytes per idle connection | active p99 µs without idle ones | with them |"
  echo "|---|---:|---:|---:|---:|---|---|"
} > "$md"

for sys in $SYSTEMS; do
  echo "== $sys" >&2
  n=$(n_of "$sys")
  start_system "$sys"
  start_holding 1
  sleep 1
  base=$(rss_kib)
  stop_holding
  without=() with=()
  start_holding "$n"
  sleep 2
  full=$(rss_kib)
  case "$sys" in
    memcached | redis) ;;
    *)
      "$BIN/ramkv-bench" --target "$target" --quiet --json --preset uniform --keys 1000 --preload \
        --connections 1 --concurrency 1 --duration 1s --warmup 0s > /dev/null
      for _ in $(seq "$REPEATS"); do
        with+=("$(p99)")
        stop_holding
        without+=("$(p99)")
        start_holding "$n"
      done ;;
  esac
  stop_holding
  stop_system
  per=$(( (full - base) * 1024 / n ))
  echo "   $base -> $full KiB: $per B per connection; p99 without ${without[*]:-} with ${with[*]:-}" >&2
  echo "| $sys | $n | $base | $full | $per | ${without[*]:-n/a} | ${with[*]:-n/a} |" >> "$md"
done
rm -f "$fifo" "$fifo.out"
echo "wrote $md" >&2
