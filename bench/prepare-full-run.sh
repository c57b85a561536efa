#!/usr/bin/env bash
# Stages what `bench/compare.sh full` needs on a lent 16-core machine that has
# no network, into .carry/ (ignored by git): the release binaries (built
# without target-cpu=native, so they run on any x86-64) and the memcached and
# Redis packages with the libraries the device image may lack.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
rm -rf .carry
mkdir -p .carry/bin .carry/debs
for b in ramkv-server ramkv ramkv-bench; do
  strip -o ".carry/bin/$b" "target/release/$b"
done
(cd .carry/debs && apt-get download memcached redis-server redis-tools libevent-2.1-7 libsasl2-2 liblzf1 libjemalloc2)
du -sh .carry
cat <<'MSG'
A device call may run 10 minutes, so split the workloads over two calls, each carrying
`.carry`, with W="uniform hot-conns bimodal" and then W="bimodal-50 large" and a matching PART:
  mkdir -p /tmp/root && for d in .carry/debs/*.deb; do dpkg -x "$d" /tmp/root; done &&
  export LD_LIBRARY_PATH=/tmp/root/usr/lib/x86_64-linux-gnu &&
  WORKLOADS="$W" DURATION=1s WARMUP=500ms NAME=$(date -u +%F)-16core-$PART \
  BIN=.carry/bin MEMCACHED=/tmp/root/usr/bin/memcached REDIS=/tmp/root/usr/bin/redis-server \
    bash bench/compare.sh full && tar czf $OUT/results.tgz bench/results/*-16core*
Then unpack each results.tgz here, and update the README's findings from them.
MSG
