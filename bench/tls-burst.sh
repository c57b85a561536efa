#!/usr/bin/env bash
# What a storm of TLS handshakes does to connections already established.
#
#   bench/tls-burst.sh [REPEATS]          (default 5)
#   SERVERS="before=/path/ramkv-server after=target/release/ramkv-server" bench/tls-burst.sh
#
# Each repeat, for each server binary in turn (alternating, so drift hits all
# alike): a steady open-loop load over 4 established TLS connections (2,000
# requests/s, 3 s), once alone and once while ramkv-handshakes runs bursts of
# 500 handshakes (100 at a time) back to back for the whole run. Prints the
# established traffic's p50/p99/p99.9 for both, medians over the repeats with
# [min, max], and the handshake rate reached. The certificates are made the
# way the README's TLS recipe makes them (openssl, ECDSA P-256).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-5}
BIN=${BIN:-target/release}
SERVERS=${SERVERS:-"ramkv=$BIN/ramkv-server"}
rate=${RATE:-2000}
[ -x "$BIN/ramkv-bench" ] && [ -x "$BIN/ramkv-handshakes" ] || cargo build --release --workspace
dir=$(mktemp -d)
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

# The README's recipe: a CA, and a server certificate for 127.0.0.1 it signs.
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key"
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 -subj "/CN=ramkv test CA" -out "$dir/ca.pem"
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/server.key"
openssl req -new -key "$dir/server.key" -subj "/CN=127.0.0.1" -out "$dir/server.csr"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 825 -sha256 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null

# The server on one core, the clients on the other: the server's threads
# (dispatcher, workers, TLS) contend only with each other. The handshake
# client runs at the lowest priority so the load generator keeps its schedule.
server_cpus=${SERVER_CPUS:-0}
client_cpus=${CLIENT_CPUS:-1}
port=17200
bench() {
  taskset -c "$client_cpus" "$BIN/ramkv-bench" --target "ramkv://127.0.0.1:$port" --tls-ca "$dir/ca.pem" --rate "$rate" \
    --connections 4 --warmup 500ms --duration 3s --json --quiet 2>/dev/null
}
results="$dir/results.tsv"
for rep in $(seq "$reps"); do
  for entry in $SERVERS; do
    name=${entry%%=*}; bin=${entry#*=}
    port=$((port + 1))
    taskset -c "$server_cpus" "$bin" --listen "127.0.0.1:$port" --tls-cert "$dir/server.pem" --tls-key "$dir/server.key" \
      --log-level error >/dev/null &
    pid=$!
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    quiet=$(bench)
    bench >"$dir/burst.json" &
    load=$!
    sleep 0.5 # the load's warmup: bursts start with its measured window
    bursts=0; shakes=0; start=$(date +%s.%N)
    while kill -0 "$load" 2>/dev/null; do
      taskset -c "$client_cpus" nice -n 19 "$BIN/ramkv-handshakes" --target "127.0.0.1:$port" --tls-ca "$dir/ca.pem" --count 500 \
        --concurrency 100 >/dev/null 2>&1 && shakes=$((shakes + 500))
      bursts=$((bursts + 1))
    done
    wait "$load"
    per_s=$(echo "$shakes $(date +%s.%N) $start" | awk '{ printf "%.0f", $1 / ($2 - $3) }')
    printf '%s\t%s\t%s\t%s\n' "$name" "$quiet" "$(cat "$dir/burst.json")" "$per_s" >>"$results"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    echo "rep $rep $name: done ($bursts bursts)" >&2
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, quiet, burst, per_s = line.rstrip("\n").split("\t")
    r = rows.setdefault(name, {"quiet": [], "burst": [], "hs": []})
    r["quiet"].append(json.loads(quiet)); r["burst"].append(json.loads(burst)); r["hs"].append(int(per_s))
def cell(runs, key):
    v = sorted(x[key] for x in runs)
    return f"{statistics.median(v):.0f} [{v[0]:.0f}, {v[-1]:.0f}]"
print("| server | load | p50 µs | p99 µs | p99.9 µs | handshakes/s | generator on time |")
print("|---|---|---|---|---|---|---|")
for name, r in rows.items():
    for load in ("quiet", "burst"):
        hs = cell([{"h": h} for h in r["hs"]], "h") if load == "burst" else ""
        print(f"| {name} | {'alone' if load == 'quiet' else 'during handshake bursts'} | "
              f"{cell(r[load], 'p50_us')} | {cell(r[load], 'p99_us')} | {cell(r[load], 'p999_us')} | {hs} | "
              f"{min(x['adherence'] for x in r[load]):.4f} (worst) |")
PY
