#!/usr/bin/env bash
# Memory per stored item, ramkv against memcached and Redis: each server's
# resident memory (VmRSS) after start, then after ramkv-bench has stored
# ITEMS keys of KEY_SIZE bytes with VALUE_SIZE-byte values (the same keys and
# values for every system); the difference over ITEMS. For ramkv it also
# gives the store's own estimate (ramkv_store_memory_bytes), which
# --max-memory is checked against. Writes
# bench/results/<date>-item-memory-<machine>.md.
#
#   bench/item-memory.sh
#   ITEMS=200000 SYSTEMS="lb memcached" bench/item-memory.sh
#
# Environment: SYSTEMS (lb memcached redis), ITEMS (1000000), KEY_SIZE (16),
# VALUE_SIZE (100), REPEATS (2), NAME, MACHINE, BIN, MEMCACHED, REDIS.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=small
BASE_PORT=17900
source bench/lib.sh
SYSTEMS=${SYSTEMS:-"lb memcached redis"}
ITEMS=${ITEMS:-1000000}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-100}
REPEATS=${REPEATS:-2}
[ -x "$BIN/ramkv-server" ] && [ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-item-memory-$machine}
md="bench/results/$name.md"

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
# Stores the ITEMS keys (a one-second closed loop of the same keys follows,
# which ramkv-bench runs after a preload; it overwrites values, it adds none).
store_items() {
  taskset -c "$gen_cpus" "$BIN/ramkv-bench" --target "$target" --quiet --preload \
    --keys "$ITEMS" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE" \
    --connections 1 --concurrency 1 --duration 1s --warmup 0s --json >/dev/null
}
estimate() { "$BIN/ramkv" --server "${target#ramkv://}" stats | awk '$1 == "ramkv_store_memory_bytes" { print $2 }'; }

{
  echo "# Memory per stored item"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); server: \`$("$BIN/ramkv-server" --version)\`"
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r); $("$MEMCACHED" -V 2>/dev/null || echo memcached), $("$REDIS" --version 2>/dev/null | cut -d' ' -f1-3 || echo redis)"
  echo "- Command: \`SYSTEMS=\"$SYSTEMS\" ITEMS=$ITEMS KEY_SIZE=$KEY_SIZE VALUE_SIZE=$VALUE_SIZE REPEATS=$REPEATS bench/item-memory.sh\`"
  echo "- Each run: a fresh server; its VmRSS after start, then after storing $ITEMS keys of $KEY_SIZE bytes with $VALUE_SIZE-byte values; the difference over $ITEMS. memcached runs with \`-m 8192\` so that nothing is evicted."
  echo
  echo "| system | run | RSS empty (KiB) | RSS with the items (KiB) | bytes per item | ramkv's own estimate per item |"
  echo "|---|---:|---:|---:|---:|---:|"
} > "$md"

for sys in $SYSTEMS; do
  for run in $(seq "$REPEATS"); do
    echo "== $sys run $run" >&2
    start_system "$sys"
    empty=$(rss_kib)
    store_items
    full=$(rss_kib)
    est="—"
    case "$sys" in memcached | redis) ;; *) est=$(awk -v b="$(estimate)" -v n="$ITEMS" 'BEGIN { printf "%.0f", b / n }') ;; esac
    per=$(awk -v a="$empty" -v b="$full" -v n="$ITEMS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    echo "   $per bytes per item" >&2
    echo "| $sys | $run | $empty | $full | $per | $est |" >> "$md"
    stop_system
  done
done
echo "wrote $md" >&2
