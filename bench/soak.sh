#!/usr/bin/env bash
# Soak test (not CI): DURATION seconds of mixed load with faults injected.
#   bench/soak.sh            # 60 s at 20,000 req/s
# Faults, every second: 50 connections opened and dropped, 5 clients that
# vanish mid-frame, 5 that send garbage, and one that floods requests and
# never reads its replies. Checks that the load sees no errors or timeouts,
# that RSS stays bounded, that puts acknowledged before the soak read back
# intact, that nothing panicked, and that SIGTERM exits 0. Writes
# bench/results/<date>-soak-<machine>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
RATE=${RATE:-20000}
RSS_BOUND_MIB=${RSS_BOUND_MIB:-256}
BIN=${BIN:-target/release}
[ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
port=17150
addr=127.0.0.1:$port
work=$(mktemp -d)
date=$(date -u +%F)
report="bench/results/$date-soak-$(nproc)core.md"

"$BIN/ramkv-server" --listen "$addr" --write-timeout 2s --frame-timeout 1s --idle-timeout 30s \
  --max-connections 4000 --log-level warn 2>"$work/server.log" >/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }

# Acknowledged puts, to read back at the end.
for i in $(seq 200); do
  echo "soak-ack-$i $("$BIN/ramkv" --server "$addr" put "soak-ack-$i" "value-$i")"
done > "$work/acked"
"$BIN/ramkv" --server "$addr" put big "$(head -c 65536 /dev/zero | tr '\0' x)" >/dev/null
# 2,000 GETs of the 64 KiB value: Request{id: 1, get: {key: "big"}}.
for _ in $(seq 2000); do printf '\x00\x00\x00\x09\x08\x01\x12\x05\x0a\x03big'; done > "$work/flood"
baseline=$(rss)

"$BIN/ramkv-bench" --target "ramkv://$addr" --preset etc --rate "$RATE" --connections 8 \
  --duration "${DURATION}s" --warmup 1s --preload --json > "$work/load.json" 2>"$work/load.err" &
load=$!
samples=()
injected=0
while kill -0 "$load" 2>/dev/null; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port"; exec 3>&-) 2>/dev/null || true; done
  for _ in $(seq 5); do (exec 3<>"/dev/tcp/127.0.0.1/$port"; printf '\x00\x00\x00\x64\x08\x01\x12' >&3) 2>/dev/null || true; done
  for _ in $(seq 5); do (exec 3<>"/dev/tcp/127.0.0.1/$port"; head -c 64 /dev/urandom >&3) 2>/dev/null || true; done
  (exec 3<>"/dev/tcp/127.0.0.1/$port"; cat "$work/flood" >&3) 2>/dev/null &
  injected=$((injected + 61))
  samples+=("$(rss)")
  sleep 1
done
wait "$load" || true
max_rss=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
json=$(cat "$work/load.json")
errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$json")
timeouts=$(sed -n 's/.*"timeouts":\([0-9]*\).*/\1/p' <<<"$json")
lost=0
while read -r key version; do
  got=$("$BIN/ramkv" --server "$addr" get "$key" --version 2>&1 >/dev/null | awk '{print $2}')
  [ "$got" = "$version" ] || lost=$((lost + 1))
done < "$work/acked"
panics=$(grep -c panicked "$work/server.log" || true)
kill -TERM "$server"
set +e; wait "$server"; exit_code=$?; set -e
verdict=PASS
[ "${errors:-1}" -eq 0 ] && [ "${timeouts:-1}" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$panics" -eq 0 ] \
  && [ "$exit_code" -eq 0 ] && [ "$max_rss" -le $((baseline + RSS_BOUND_MIB * 1024)) ] || verdict=FAIL
{
  echo "# Soak test: $verdict"
  echo
  echo "- Date: $date (UTC), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "- Command: \`DURATION=$DURATION RATE=$RATE bench/soak.sh\`"
  echo "- Load: ramkv-bench --preset etc at $RATE req/s over 8 connections for ${DURATION} s"
  echo "- Faults injected: $injected connections (opened and dropped, vanished mid-frame, garbage, never-reading floods)"
  echo
  echo "| check | result |"
  echo "|---|---|"
  echo "| load errors / timeouts | $errors / $timeouts |"
  echo "| RSS baseline → max during soak | $((baseline / 1024)) MiB → $((max_rss / 1024)) MiB (bound: +$RSS_BOUND_MIB MiB) |"
  echo "| acknowledged puts lost | $lost of 200 |"
  echo "| panics in the server log | $panics |"
  echo "| SIGTERM exit code | $exit_code |"
  echo
  echo "Load result: \`$json\`"
  echo
  echo "RSS per second (KiB): ${samples[*]}"
} > "$report"
cat "$report"
[ "$verdict" = PASS ]
