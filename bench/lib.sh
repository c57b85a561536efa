# Shared by bench/compare.sh and bench/breakdown.sh: the machine profile, and
# starting, pinning, driving and stopping each system the same way.
# Source it after setting `profile` (small|full); honours BIN, MEMCACHED, REDIS.

BIN=${BIN:-target/release}
MEMCACHED=${MEMCACHED:-memcached}
REDIS=${REDIS:-redis-server}
case "$profile" in
  small) server_cpus=0; gen_cpus=1; ncores=1; gen_threads=1; conns=16 ;;
  full) server_cpus=0-7; gen_cpus=8-15; ncores=8; gen_threads=8; conns=64 ;;
  *) echo "usage: $0 small|full" >&2; exit 2 ;;
esac
[ -x "$BIN/ramkv-server" ] && [ -x "$BIN/ramkv-bench" ] || cargo build --release --workspace
port=${BASE_PORT:-17000}
pid=""

# lb splits the server cores: a quarter dispatchers (at least 1), the rest workers.
disp=$(( ncores / 4 )); [ "$disp" -ge 1 ] || disp=1
workers=$(( ncores - disp )); [ "$workers" -ge 1 ] || workers=1
ramkv_common=(--enable-spin-op --spin-op-max-us 1000000 --max-memory 8GiB --log-level warn)

machine_lines() {
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
  echo "- Server cores: \`$server_cpus\` ($ncores), generator cores: \`$gen_cpus\` ($gen_threads threads), $conns connections"
  echo "- lb: $disp dispatcher(s) + $workers worker(s); inline-N and memcached -t use all $ncores server core(s); redis-server is single-threaded"
}

# Starts system $1 pinned to the server cores, under the command in the WRAP
# array if set (valgrind, say); sets pid and target.
start_system() {
  local sys=$1
  port=$((port + 1))
  local addr="127.0.0.1:$port"
  case "$sys" in
    lb) cmd=("$BIN/ramkv-server" --listen "$addr" --dispatchers "$disp" --workers "$workers" "${ramkv_common[@]}") ;;
    lb-no-quick) cmd=("$BIN/ramkv-server" --listen "$addr" --dispatchers "$disp" --workers "$workers" --no-quick-path "${ramkv_common[@]}") ;;
    lb-reuseport) cmd=("$BIN/ramkv-server" --listen "$addr" --dispatchers "$disp" --workers "$workers" --reuseport "${ramkv_common[@]}") ;;
    inline-1) cmd=("$BIN/ramkv-server" --listen "$addr" --arch inline --dispatchers 1 "${ramkv_common[@]}") ;;
    inline-shared) cmd=("$BIN/ramkv-server" --listen "$addr" --arch inline --dispatchers "$ncores" "${ramkv_common[@]}") ;;
    inline-reuseport) cmd=("$BIN/ramkv-server" --listen "$addr" --arch inline --dispatchers "$ncores" --reuseport "${ramkv_common[@]}") ;;
    thread-per-conn) cmd=("$BIN/ramkv-server" --listen "$addr" --arch thread-per-conn "${ramkv_common[@]}") ;;
    memcached)
      cmd=("$MEMCACHED" -l 127.0.0.1 -p "$port" -U 0 -t "$ncores" -m 8192 -c "${MEMCACHED_CONNS:-4096}")
      [ "$(id -u)" -ne 0 ] || cmd+=(-u root) ;;
    redis) cmd=("$REDIS" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --maxclients "${REDIS_CLIENTS:-4096}") ;;
    *) echo "$0: unknown system $sys" >&2; exit 2 ;;
  esac
  taskset -c "$server_cpus" ${WRAP+"${WRAP[@]}"} "${cmd[@]}" >/dev/null 2>&1 &
  pid=$!
  case "$sys" in memcached) target="memcache://$addr" ;; redis) target="redis://$addr" ;; *) target="ramkv://$addr" ;; esac
  system=$sys
  for _ in $(seq 1200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$0: $sys did not start" >&2
  exit 1
}

stop_system() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop_system EXIT

# The server's own counters: requests it has served, and its CPU time in µs
# (getrusage: ramkv's STATS, Redis's INFO, memcached's stats).
server_counters() {
  local port=${target##*:}
  case "$system" in
    redis)
      redis-cli -p "$port" INFO | tr -d '\r' | awk -F: '
        /^total_commands_processed:/ { r = $2 } /^used_cpu_(user|sys):/ { c += $2 * 1e6 }
        END { printf "%d %d\n", r, c }' ;;
    memcached)
      exec 9<>"/dev/tcp/127.0.0.1/$port"
      printf 'stats\r\nquit\r\n' >&9
      tr -d '\r' <&9 | awk '
        $2 == "cmd_get" || $2 == "cmd_set" { r += $3 } $2 ~ /^rusage_(user|system)$/ { c += $3 * 1e6 }
        END { printf "%d %d\n", r, c }'
      exec 9<&- ;;
    *)
      "$BIN/ramkv" --server "${target#ramkv://}" --timeout 60s stats | awk '
        $1 ~ /^ramkv_requests_total/ { r += $2 } $1 == "ramkv_process_cpu_us_total" { c = $2 }
        END { printf "%d %d\n", r, c }' ;;
  esac
}

# ramkv-bench's preload flag for workload $1: the SPIN workloads store nothing.
preload_for() { case "$1" in bimodal*) ;; *) echo --preload ;; esac; }

# Runs ramkv-bench against the current target, pinned to the generator cores.
bench() { taskset -c "$gen_cpus" "$BIN/ramkv-bench" --target "$target" --threads "$gen_threads" --connections "$conns" --quiet "$@"; }
# Reads one field from ramkv-bench's --json line on stdin.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p"; }
# Runs awk program $2 over ramkv-bench CSV file $1, with the columns by name:
# c["p99_us"] is the p99 column's number. Further arguments go to awk (-v ...).
csv_awk() {
  local file=$1 prog=$2
  shift 2
  awk -F, "$@" "NR == 1 { for (col_ = 1; col_ <= NF; col_++) c[\$col_] = col_; next } $prog" "$file"
}
