#!/usr/bin/env bash
# Runs the architecture comparison and writes bench/results/<date>-<machine>.md.
#
#   bench/compare.sh small   # this 2-core VM: server on core 0, generator on core 1
#   bench/compare.sh full    # 16 cores: server on 0-7, generator on 8-15
#
# For every workload it measures each system's closed-loop peak, then sweeps
# the same offered rates (fractions of lb's peak) against every system:
# ramkv in each --arch, memcached (-t = server cores) and redis-server.
# Then, unless BREAKDOWN=0, bench/breakdown.sh explains where the time went
# (<name>-breakdown.md), so this one command reproduces the whole comparison.
# Every sweep point runs REPEAT times (default 3); tables give the median p99
# with its 95% confidence interval (ramkv-bench --repeat).
# Environment overrides: BIN (release binaries), MEMCACHED, REDIS, WORKLOADS,
# DURATION, WARMUP, REPEAT, SLO_US, MACHINE, NAME (the results file's name, for
# runs split by WORKLOADS across several calls), BREAKDOWN.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-small}
SLO_US=${SLO_US:-500}
source bench/lib.sh
DURATION=${DURATION:-2s}
WARMUP=${WARMUP:-1s}
REPEAT=${REPEAT:-3}
WORKLOADS=${WORKLOADS:-"uniform hot-conns bimodal bimodal-50 large"}
FRACTIONS=(0.1 0.3 0.5 0.7 0.9 1.0 1.1 1.3)
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-$machine}
out="bench/results/$name"
md="bench/results/$name.md"
mkdir -p "$out"

systems_for() {
  local s="lb inline-1"
  if [ "$ncores" -gt 1 ]; then s="lb lb-reuseport inline-1 inline-shared inline-reuseport"; fi
  s="$s thread-per-conn"
  case "$1" in bimodal*) ;; *) s="$s memcached redis" ;; esac
  echo "$s"
}

{
  echo "# Architecture comparison: $profile run"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  machine_lines
  echo "- Command: \`bench/compare.sh $profile\` (DURATION=$DURATION, WARMUP=$WARMUP, REPEAT=$REPEAT per point, SLO p99 ≤ ${SLO_US} µs)"
  echo "- Offered rates: ${FRACTIONS[*]} × lb's closed-loop peak, the same for every system"
  echo
} > "$md"

for w in $WORKLOADS; do
  echo "== workload $w" >&2
  mkdir -p "$out/$w"
  systems=$(systems_for "$w")
  read -ra preload <<<"$(preload_for "$w")"
  # The reference peak: lb, closed loop.
  start_system lb
  lb_peak=$(bench --preset "$w" "${preload[@]}" --concurrency 4 --duration "$DURATION" --warmup "$WARMUP" --json | field achieved_rate)
  stop_system
  rates=$(for f in "${FRACTIONS[@]}"; do awk -v p="$lb_peak" -v f="$f" 'BEGIN{printf "%d,", p*f}'; done)
  rates=${rates%,}
  echo "   lb peak $lb_peak req/s; sweep $rates" >&2
  series=()
  rows=()
  for sys in $systems; do
    start_system "$sys"
    peak=$(bench --preset "$w" "${preload[@]}" --concurrency 4 --duration "$DURATION" --warmup "$WARMUP" --json | field achieved_rate)
    echo "$peak" > "$out/$w/$sys.peak"
    bench --preset "$w" --sweep "$rates" --repeat "$REPEAT" --duration "$DURATION" --warmup "$WARMUP" --out "$out/$w/$sys" 2>&1 | sed "s/^/   $sys: /" >&2
    rm -f "$out/$w/$sys.svg" # one plot per workload, with every system, is drawn below
    if [ "${target%%://*}" = ramkv ]; then
      "$BIN/ramkv" --server "${target#ramkv://}" stats | grep -E 'queue_delay|service_time|busy_ns|parks|shed' > "$out/$w/$sys.stats.txt" || true
    fi
    stop_system
    series+=(--series "$sys=$out/$w/$sys.csv")
    rows+=("$(csv_awk "$out/$w/$sys.csv" '
      { i++; p99[i] = $c["p99_us"]; lo[i] = $c["p99_us_lo"]; hi[i] = $c["p99_us_hi"]; p999[i] = $c["p999_us"]
        mark[i] = ($c["valid"] == "false") ? " (invalid)" : ($c["generator_late"] == "true") ? "*" : ""
        mark[i] = mark[i] (($c["noise"] == "true") ? " (noise)" : "") }
      $c["valid"] == "true" && $c["p99_us"] <= slo && $c["errors"] == 0 && $c["timeouts"] == 0 &&
        $c["achieved_rate"] >= 0.95 * $c["offered_rate"] && $c["achieved_rate"] > best { best = $c["achieved_rate"] }
      function cell(k) { return (lo[k] == "") ? sprintf("%.0f / %.0f%s", p99[k], p999[k], mark[k]) : sprintf("%.0f [%.0f, %.0f] / %.0f%s", p99[k], lo[k], hi[k], p999[k], mark[k]) }
      END { printf "| %s | %.0f | %.0f | %s | %s | %s |", sys, peak, best, cell(3), cell(4), cell(5) }
    ' -v sys="$sys" -v peak="$peak" -v slo="$SLO_US")")
  done
  "$BIN/ramkv-bench" --plot "$out/$w.svg" --title "$w: p99 and p99.9 vs throughput ($profile)" "${series[@]}" 2>/dev/null
  {
    echo "## $w"
    echo
    echo "![$w]($name/$w.svg)"
    echo
    echo "| system | closed-loop peak (req/s) | max rate with p99 ≤ ${SLO_US} µs | p99 [95% CI] / p99.9 µs at 50% | at 70% | at 90% |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "Percentages are of lb's peak ($lb_peak req/s). Each cell is the median of $REPEAT runs. \`*\`: the generator fell behind its schedule (adherence < 99.9%); (invalid): below 95%, the point is not the load it claims; (noise): its p99 fell while the offered rate rose, beyond the other points' intervals. Raw sweeps: \`$out/$w/*.csv\`; lb's STATS after its sweep: \`$out/$w/lb.stats.txt\`."
    echo
  } >> "$md"
done
# The targets, as ratios measured in this run.
slo_best() {
  csv_awk "$1" '$c["valid"] == "true" && $c["p99_us"] <= slo && $c["errors"] == 0 && $c["timeouts"] == 0 &&
    $c["achieved_rate"] >= 0.95 * $c["offered_rate"] && $c["achieved_rate"] > b { b = $c["achieved_rate"] } END { print b + 0 }' -v slo="$SLO_US"
}
p99_at() { csv_awk "$1" 'NR == row + 1 { print $c["p99_us"] }' -v row="$2"; }
# a / b; "∞" when only b is 0 (say, memcached met the SLO at no rate at all).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else if (a > 0) print "∞"; else print "n/a" }'; }
{
  echo "## Targets"
  echo
  echo "| target | measured | ratio | goal |"
  echo "|---|---|---:|---|"
  for w in hot-conns bimodal bimodal-50; do
    [ -f "$out/$w/lb.csv" ] || continue
    best_sys=""; best=""
    for f in "$out/$w"/inline-*.csv "$out/$w"/thread-per-conn.csv; do
      [ -f "$f" ] || continue
      v=$(p99_at "$f" 4)
      if [ -z "$best" ] || awk -v a="$v" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$v; best_sys=$(basename "$f" .csv); fi
    done
    lb=$(p99_at "$out/$w/lb.csv" 4)
    echo "| $w: lb p99 at 70% vs best partitioned ($best_sys) | $lb µs vs $best µs | $(ratio "$lb" "$best") | ≤ 0.33 |"
  done
  if [ -f "$out/uniform/lb.peak" ]; then
    best=0; best_sys=""
    for f in "$out/uniform"/inline-*.peak; do
      v=$(cat "$f"); if awk -v a="$v" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$v; best_sys=$(basename "$f" .peak); fi
    done
    lb=$(cat "$out/uniform/lb.peak")
    echo "| uniform: lb peak vs $best_sys peak | $lb vs $best req/s | $(ratio "$lb" "$best") | ≥ 0.9 |"
  fi
  for w in $WORKLOADS; do
    [ -f "$out/$w/memcached.csv" ] || continue
    lb=$(slo_best "$out/$w/lb.csv"); mc=$(slo_best "$out/$w/memcached.csv")
    echo "| $w: lb vs memcached, max rate with p99 ≤ ${SLO_US} µs | $lb vs $mc req/s | $(ratio "$lb" "$mc") | ≥ 1.0 |"
  done
  echo
} >> "$md"
if [ "${BREAKDOWN:-1}" = 1 ]; then
  stop_system
  NAME="$name-breakdown" WORKLOADS="$WORKLOADS" bash bench/breakdown.sh "$profile"
  {
    echo "Where the time goes, and server CPU per request against memcached, with every system at"
    echo "the same offered load: [$name-breakdown.md]($name-breakdown.md)."
    echo
  } >> "$md"
fi
echo "wrote $md" >&2
