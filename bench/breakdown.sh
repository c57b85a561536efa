#!/usr/bin/env bash
# Where the time goes, and server CPU per request, with every system at the
# same offered load. Writes bench/results/<date>-<machine>-breakdown.md.
#
#   bench/breakdown.sh small   # this 2-core VM: server on core 0, generator on core 1
#   bench/breakdown.sh full    # 16 cores: server on 0-7, generator on 8-15
#
# For every workload it measures each system's closed-loop peak, then offers
# FRACTION (0.5) x the lowest of those peaks to each system in turn, started
# fresh: a warmup run, then a measured run between two snapshots of the
# server's CPU time (/proc/PID/stat) and, for ramkv, of its STATS. From the
# deltas: CPU per request, and how ramkv spent it (dispatcher busy time,
# execution, the rest) and how long requests waited in the queue. A third run
# under `perf record` profiles lb when perf works (PROFILE=0 turns it off).
# Environment overrides: BIN, MEMCACHED, REDIS, WORKLOADS, DURATION_S, WARMUP,
# FRACTION, MACHINE, NAME, PROFILE, PERF (the perf binary).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-small}
BASE_PORT=17500
source bench/lib.sh
DURATION_S=${DURATION_S:-3}
WARMUP=${WARMUP:-1s}
FRACTION=${FRACTION:-0.5}
WORKLOADS=${WORKLOADS:-"uniform hot-conns bimodal"}
PROFILE=${PROFILE:-1}
PERF=${PERF:-perf}
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-$machine-breakdown}
out="bench/results/$name"
md="bench/results/$name.md"
mkdir -p "$out"
tck=$(getconf CLK_TCK)
if [ "$PROFILE" = 1 ] && ! "$PERF" record -q -o /dev/null -- true >/dev/null 2>&1; then
  echo "breakdown.sh: perf does not work here; no profiles" >&2
  PROFILE=0
fi

systems_for() {
  local s="lb inline-1 thread-per-conn"
  if [ "$ncores" -gt 1 ]; then s="lb lb-reuseport inline-shared inline-reuseport thread-per-conn"; fi
  case "$1" in bimodal*) ;; *) s="$s memcached redis" ;; esac
  echo "$s"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
snapshot() { if [ "${target%%://*}" = ramkv ]; then "$BIN/ramkv" --server "${target#ramkv://}" stats > "$1"; else : > "$1"; fi; }
# The change of every figure matching regex $1 between snapshots $2 and $3.
delta() { awk -v re="$1" 'FNR == NR { if ($1 ~ re) a += $2; next } $1 ~ re { b += $2 } END { print b - a }' "$2" "$3"; }
per() { awk -v a="$1" -v b="$2" -v s="${3:-1}" 'BEGIN { if (b > 0) printf "%.2f", a * s / b; else print "n/a" }'; }

{
  echo "# Where the time goes: $profile run"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  machine_lines
  echo "- Command: \`bench/breakdown.sh $profile\` (DURATION_S=$DURATION_S, WARMUP=$WARMUP, FRACTION=$FRACTION)"
  echo "- Each workload offers every system the same rate: $FRACTION × the lowest closed-loop peak among them."
  echo "  Server CPU is user + system time of the whole process over the measured run (clock ticks of $((1000 / tck)) ms)."
  echo
} > "$md"

for w in $WORKLOADS; do
  echo "== workload $w" >&2
  mkdir -p "$out/$w"
  systems=$(systems_for "$w")
  read -ra preload <<<"$(preload_for "$w")"
  declare -A peak=()
  low=""
  for sys in $systems; do
    start_system "$sys"
    peak[$sys]=$(bench --preset "$w" "${preload[@]}" --concurrency 4 --duration "${DURATION_S}s" --warmup "$WARMUP" --json | field achieved_rate)
    stop_system
    if [ -z "$low" ] || awk -v a="${peak[$sys]}" -v b="$low" 'BEGIN { exit !(a < b) }'; then low=${peak[$sys]}; fi
  done
  rate=$(awk -v p="$low" -v f="$FRACTION" 'BEGIN { printf "%d", p * f }')
  echo "   offered rate $rate req/s" >&2
  rows=(); splits=(); mc_cpu=""
  for sys in $systems; do
    start_system "$sys"
    bench --preset "$w" "${preload[@]}" --rate "$rate" --duration "$WARMUP" --warmup 0s --json > /dev/null
    snapshot "$out/$w/$sys.before"; t0=$(cpu_ticks)
    json=$(bench --preset "$w" --rate "$rate" --duration "${DURATION_S}s" --warmup 0s --json)
    t1=$(cpu_ticks); snapshot "$out/$w/$sys.after"
    echo "$json" > "$out/$w/$sys.json"
    achieved=$(field achieved_rate <<<"$json")
    reqs=$(awk -v r="$achieved" -v d="$DURATION_S" 'BEGIN { print r * d }')
    cpu_us=$(per "$((t1 - t0))" "$reqs" "$(( 1000000 / tck ))")
    [ "$sys" != memcached ] || mc_cpu=$cpu_us
    late=""; [ "$(field generator_late <<<"$json")" = false ] || late="*"
    cores=$(awk -v t="$((t1 - t0))" -v k="$tck" -v d="$DURATION_S" 'BEGIN { printf "%.2f", t / k / d }')
    rows+=("| $sys | ${peak[$sys]} | $achieved$late | $(field p50_us <<<"$json") | $(field p99_us <<<"$json") | $cores | $cpu_us |")
    if [[ $sys == lb* || $sys == inline* ]]; then
      b="$out/$w/$sys.before"; a="$out/$w/$sys.after"
      disp_ns=$(per "$(delta '^ramkv_dispatcher_busy_ns_total' "$b" "$a")" "$reqs")
      exec_ns=$(per "$(delta '^ramkv_worker_busy_ns_total' "$b" "$a")" "$reqs")
      rest_ns=$(awk -v c="$cpu_us" -v d="$disp_ns" -v e="$exec_ns" 'BEGIN { printf "%.0f", c * 1000 - d - e }')
      qd=$(per "$(delta '^ramkv_queue_delay_ns_sum' "$b" "$a")" "$(delta '^ramkv_queue_delay_ns_count' "$b" "$a")" 0.001)
      st=$(per "$(delta '^ramkv_service_time_ns_sum' "$b" "$a")" "$(delta '^ramkv_service_time_ns_count' "$b" "$a")" 0.001)
      parks=$(per "$(delta '^ramkv_worker_parks_total' "$b" "$a")" "$reqs")
      splits+=("| $sys | $disp_ns | $exec_ns | $rest_ns | $qd | $st | $parks |")
    fi
    if [ "$PROFILE" = 1 ] && [ "$sys" = lb ]; then
      "$PERF" record -q -F 499 -g -p "$pid" -o "$out/$w/lb.perf.data" -- sleep "$DURATION_S" 2>/dev/null &
      perf_pid=$!
      bench --preset "$w" --rate "$rate" --duration "${DURATION_S}s" --warmup 0s --json > /dev/null
      wait "$perf_pid" || true
      "$PERF" report -i "$out/$w/lb.perf.data" --no-children --sort dso,sym --stdio -g none --percent-limit 1 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -25 > "$out/$w/lb.perf.txt" || true
      rm -f "$out/$w/lb.perf.data"
    fi
    stop_system
  done
  {
    echo "## $w at $rate req/s"
    echo
    echo "| system | closed-loop peak (req/s) | achieved (req/s) | p50 µs | p99 µs | server cores busy | server CPU µs/request |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "\`*\`: the generator fell behind its schedule. Where ramkv's time went, per request:"
    echo
    echo "| system | dispatcher busy ns | execution ns | other CPU ns | mean queue delay µs | mean service time µs | worker parks |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${splits[@]}"
    echo
    echo "Dispatcher busy time covers reading, framing, decoding and writing (and, inline, executing too)."
    echo "Execution is worker busy time. Other CPU is the rest of the process's CPU: idle workers spinning"
    echo "before they park, park and wake-up system calls, and the runtimes' own polling."
    if [ -s "$out/$w/lb.perf.txt" ]; then
      echo
      echo "lb's profile at the same rate (\`perf record -F 499 -g\`, self time, symbols above 1%):"
      echo
      echo '```'
      cat "$out/$w/lb.perf.txt"
      echo '```'
    fi
    if [ -n "$mc_cpu" ]; then
      echo
      lb_cpu=$(awk -F'|' '{ gsub(/ /, "", $8); print $8 }' <<<"${rows[0]}")
      echo "**Target:** lb's server CPU per request is $(per "$lb_cpu" "$mc_cpu")× memcached's (goal ≤ 1.0)."
    fi
    echo
  } >> "$md"
  unset peak
done
echo "wrote $md" >&2
