#!/usr/bin/env bash
# Efficiency figures that do not drift with machine noise: per request, the
# server's user-space instructions (callgrind), its system calls by kind
# (strace) and, for reference, its CPU time (getrusage). Writes
# bench/results/<date>-efficiency-<machine>.md.
#
#   bench/efficiency.sh                      # every system, shapes 1x1 and 16x1
#   SYSTEMS="lb inline-1" bench/efficiency.sh
#   SYSTEMS="inline-1 lb-no-quick" SHAPES=16x1 bench/efficiency.sh   # costs for ramkv-sim
#
# The server runs on core 0 and ramkv-bench on core 1, in closed loop with one
# request outstanding per connection (SHAPES: CONNSxOUTSTANDING), 90% GETs of
# 100-byte values over 10,000 preloaded keys. Each figure comes from its own
# run of the server, because strace and callgrind slow it down: load runs,
# the server's request counter is read, the tool measures for SECONDS, the
# counter is read again, and the tool's total is divided by the difference.
# Instruction and system-call counts repeat to within a few percent whatever
# else the machine does; the CPU figure is the noisy one.
# When inline-1 and lb-no-quick (lb with every request handed off) both ran
# at 16x1, their CPU figures also become step costs for ramkv-sim in
# $out/sim.calibration: dispatch_us (inline-1's CPU per request: read, run,
# write) and handoff_us (what lb-no-quick spends on top).
# Environment: SYSTEMS, SHAPES, SECONDS_CPU (4), SECONDS_STRACE (3),
# SECONDS_CALLGRIND (4), NAME, MACHINE, BIN, MEMCACHED, REDIS.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=small
BASE_PORT=17700
source bench/lib.sh
SYSTEMS=${SYSTEMS:-"lb inline-1 thread-per-conn redis memcached"}
SHAPES=${SHAPES:-"1x1 16x1"}
SECONDS_CPU=${SECONDS_CPU:-4}
SECONDS_STRACE=${SECONDS_STRACE:-3}
SECONDS_CALLGRIND=${SECONDS_CALLGRIND:-4}
date=$(date -u +%F)
machine=${MACHINE:-$(nproc)core}
name=${NAME:-$date-efficiency-$machine}
out="bench/results/$name"
md="bench/results/$name.md"
mkdir -p "$out"
workload=(--preset uniform --keys 10000)
for tool in strace valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "efficiency.sh: $tool is missing (apt-get install strace valgrind)" >&2; exit 1; }
done

# ramkv-bench on the generator core against the current target.
gen() { taskset -c "$gen_cpus" "$BIN/ramkv-bench" --target "$target" --quiet "${workload[@]}" --connect-timeout 30s "$@"; }
preload() { gen --preload --connections 1 --concurrency 1 --duration 1s --warmup 0s --json >/dev/null; }
# Runs closed-loop load of shape $1 in the background for $2 seconds.
load() {
  gen --connections "${1%x*}" --concurrency "${1#*x}" --warmup 0s --duration "${2}s" --drain 30s \
    --json > "$out/load.json" 2>"$out/load.err" &
  load_pid=$!
}
# Counters now: "requests cpu_us".
counters() { server_counters; }
settle() { sleep "${1:-1}"; }

# CPU µs per request (getrusage, as the server itself reports it).
measure_cpu() {
  local shape=$1
  start_system "$sys"
  preload
  load "$shape" $((SECONDS_CPU + 2))
  settle 1
  read -r r0 c0 < <(counters)
  sleep "$SECONDS_CPU"
  read -r r1 c1 < <(counters)
  wait "$load_pid" || true
  stop_system
  awk -v r=$((r1 - r0)) -v c=$((c1 - c0)) 'BEGIN { if (r > 0) printf "%.2f", c / r; else print "n/a" }'
}

# System calls per request, by kind: strace attached to every thread.
measure_syscalls() {
  local shape=$1 file=$2
  start_system "$sys"
  preload
  load "$shape" $((SECONDS_STRACE + 4))
  settle 1
  # Every thread by its id (with -f, strace missed thread-per-conn's
  # connection threads); in a closed loop they all exist before the attach.
  local tids=()
  for t in /proc/"$pid"/task/*; do tids+=(-p "${t##*/}"); done
  read -r r0 _ < <(counters)
  strace -c -q -o "$file.raw" "${tids[@]}" &
  local strace_pid=$!
  sleep "$SECONDS_STRACE"
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  read -r r1 _ < <(counters)
  wait "$load_pid" || true
  stop_system
  # Per request, every call seen at least once per 100 requests, most first.
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
  local r=$((r1 - r0))
  awk -v r="$r" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { printf "%s %.4f\n", $NF, $4 / r }' "$file.raw" \
    | sort -k2 -nr > "$file.per-request"
  awk '{ t += $2 } END { printf "%.2f", t }' "$file.per-request"
  awk '$2 >= 0.01 { printf "%s%s %.2f", (n++ ? ", " : " ("), $1, $2 } END { if (n) printf ")" }' "$file.per-request"
}

# User-space instructions per request: callgrind, collecting only while the
# measured load runs.
measure_instructions() {
  local shape=$1 file=$2
  WRAP=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file.%p")
  start_system "$sys"
  unset WRAP
  preload
  load "$shape" $((SECONDS_CALLGRIND + 8))
  settle 3
  read -r r0 _ < <(counters)
  callgrind_control -z "$pid" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  sleep "$SECONDS_CALLGRIND"
  callgrind_control -i off "$pid" >/dev/null
  read -r r1 _ < <(counters)
  callgrind_control -d "$pid" >/dev/null
  # The dump written by -d ("FILE.PID.1") holds what was counted since the zeroing.
  local dump="$file.$pid.1"
  for _ in $(seq 100); do [ -s "$dump" ] && break; sleep 0.1; done
  wait "$load_pid" || true
  stop_system
  instructions_per_request "$dump" $((r1 - r0))
  [ -n "${KEEP_DUMPS:-}" ] || rm -f "$file".*[0-9]
}

# Instructions in callgrind dump $1 per request. Requests are counted in the
# dump itself where a function runs once per request and is not inlined (a
# ramkv service's admit, or ramkv::wire::decode_request in servers built
# before the runtime rewrite, for A/B runs; Redis's processCommand): then the
# count covers
# exactly the instructions' window. Otherwise (memcached's binary has no
# symbols) the server's counter over the window, $2, is used; callgrind_control
# takes a moment to switch collection on and off under load, so that count
# can be a few percent off.
instructions_per_request() {
  awk -v r="$2" '
    match($0, /^c?fn=\([0-9]+\)/) {
      id = substr($0, 1, RLENGTH); sub(/^c?fn=/, "", id)
      if (length($0) > RLENGTH + 1) name[id] = substr($0, RLENGTH + 2)
      if ($0 ~ /^cfn=/) callee = name[id]
      next
    }
    /^calls=/ && (callee ~ / as ramkv::runtime::service::Service>::admit$|^ramkv::wire::decode_request$/ || callee == "processCommand") {
      split($1, c, "="); calls += c[2]
    }
    /^(summary|totals):/ { ir = $2 }
    END {
      n = calls > 0 ? calls : r
      # Marked when divided by the counter, so an A/B never mixes the two unseen.
      if (n > 0 && ir > 0) printf "%.0f%s", ir / n, (calls > 0 ? "" : " (by counter)"); else print "n/a"
    }' "$1"
}

{
  echo "# Efficiency per request: instructions, system calls, CPU"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); server: \`$("$BIN/ramkv-server" --version)\`"
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r); $(valgrind --version), $(strace -V | head -1)"
  echo "- Command: \`SYSTEMS=\"$SYSTEMS\" SHAPES=\"$SHAPES\" bench/efficiency.sh\`"
  echo "- Server pinned to core 0, ramkv-bench to core 1; closed loop, CONNS×OUTSTANDING; 90% GET, 100 B values, 10,000 preloaded keys."
  echo "- Instructions: callgrind, user space only, collected for ${SECONDS_CALLGRIND} s of load. System calls: \`strace -c\` attached to every server thread for ${SECONDS_STRACE} s (calls per request, those at ≥ 0.01 listed). CPU: the server's own getrusage over ${SECONDS_CPU} s."
  echo "- Requests: for instructions, the calls in the callgrind dump to a function run once per request (ramkv's service \`admit\`, Redis's \`processCommand\`), so both counts cover one window; elsewhere, and for instructions where no such call was found (marked \"by counter\"), the server's own counter (ramkv STATS, Redis \`total_commands_processed\`, memcached \`cmd_get + cmd_set\`) over the same window."
  echo
  echo "| system | shape | instructions / req | system calls / req (by kind) | CPU µs / req |"
  echo "|---|---|---:|---|---:|"
} > "$md"

declare -A cpu_of
for sys in $SYSTEMS; do
  for shape in $SHAPES; do
    echo "== $sys $shape" >&2
    base="$out/$sys-$shape"
    # Each measurement runs in a subshell, where start_system's port
    # increment is lost: give each a port of its own here.
    port=$((port + 1)); cpu=$(measure_cpu "$shape")
    port=$((port + 1)); sc=$(measure_syscalls "$shape" "$base.strace")
    # memcached sets RLIMIT_NOFILE at startup, which valgrind refuses: it
    # does not run under callgrind at all, and the table says so.
    port=$((port + 1)); ir=$(measure_instructions "$shape" "$base.callgrind") || ir="n/a (does not run under valgrind)"
    echo "   instructions $ir, syscalls $sc, cpu $cpu us" >&2
    echo "| $sys | $shape | $ir | $sc | $cpu |" >> "$md"
    cpu_of["$sys $shape"]=$cpu
  done
done
echo >> "$md"
echo "Raw strace summaries: \`$out/*.strace.raw\`." >> "$md"
if [ -n "${cpu_of[inline-1 16x1]:-}" ] && [ -n "${cpu_of[lb-no-quick 16x1]:-}" ]; then
  {
    echo "# ramkv-sim step costs from bench/efficiency.sh ($date, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $machine):"
    echo "# CPU µs per request at 16x1 on one server core; wake_us is not measured here (see bench/sim/)."
    echo "dispatch_us=${cpu_of[inline-1 16x1]}"
    awk -v l="${cpu_of[lb-no-quick 16x1]}" -v i="${cpu_of[inline-1 16x1]}" 'BEGIN { d = l - i; printf "handoff_us=%.2f\n", (d > 0 ? d : 0) }'
  } > "$out/sim.calibration"
  echo "Step costs for ramkv-sim: \`$out/sim.calibration\`." >> "$md"
fi
echo "wrote $md" >&2
