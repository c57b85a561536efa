#!/usr/bin/env bash
# Stages what `bench/compare.sh full` and `bench/breakdown.sh full` need on a
# lent 16-core machine that has no network, into .carry/ (ignored by git): the
# release binaries (built without target-cpu=native, so they run on any
# x86-64; debug info stripped, symbols kept for perf), and the memcached, Redis
# and perf packages with the libraries the device image may lack.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
rm -rf .carry
mkdir -p .carry/bin .carry/debs
for b in ramkv-server ramkv ramkv-bench; do
  strip --strip-debug -o ".carry/bin/$b" "target/release/$b"
done
# The store map benchmark too, to rerun its contention test on many cores.
zipf=$(cargo bench --bench store_zipf --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*store_zipf[^"]*\)".*/\1/p' | tail -1)
strip --strip-debug -o .carry/bin/store_zipf "$zipf"
(cd .carry/debs && apt-get download memcached redis-server redis-tools libevent-2.1-7 libsasl2-2 liblzf1 libjemalloc2 \
  linux-perf libbabeltrace1 libdw1 libelf1 libnuma1 libopencsd1 libperl5.36 libpython3.11 libslang2 libunwind8 libtraceevent1)
du -sh .carry
cat <<'MSG'
A device call may run 10 minutes, so the work is split over two calls, each carrying `.carry`.
Both start with this setup (call it $SETUP):
  mkdir -p /tmp/root && for d in .carry/debs/*.deb; do dpkg -x "$d" /tmp/root; done &&
  export LD_LIBRARY_PATH=/tmp/root/usr/lib/x86_64-linux-gnu BIN=.carry/bin \
    MEMCACHED=/tmp/root/usr/bin/memcached REDIS=/tmp/root/usr/bin/redis-server PERF=/tmp/root/usr/bin/perf &&
Call 1 (it first records what the machine is: the lent machines may run under gVisor, where
the kernel reports 4.4.0, taskset may not isolate anything and perf has no events):
  $SETUP { uname -a; nproc; taskset -cp $$; "$PERF" stat -e task-clock true; } > $OUT/env.txt 2>&1;
  WORKLOADS="uniform hot-conns bimodal" DURATION=1s WARMUP=500ms BREAKDOWN=0 NAME=$(date -u +%F)-16core-a \
    bash bench/compare.sh full; tar czf $OUT/a.tgz bench/results/*-16core*
Call 2 (each step saves its results to $OUT before the next starts):
  $SETUP WORKLOADS="bimodal-50 large" DURATION=1s WARMUP=500ms BREAKDOWN=0 NAME=$(date -u +%F)-16core-b \
    bash bench/compare.sh full; tar czf $OUT/b.tgz bench/results/*-16core*;
  DURATION_S=2 WARMUP=500ms NAME=$(date -u +%F)-16core-breakdown bash bench/breakdown.sh full;
  tar czf $OUT/c.tgz bench/results/*-16core-breakdown*;
  taskset -c 0-7 .carry/bin/store_zipf 8 2 > $OUT/store-zipf-8threads.txt
Then unpack the archives here, and update the README's findings from them.
MSG
