#!/usr/bin/env bash
# Validates ramkv-sim against the emulated runs (bench/emulated.sh's results):
# each measured system is simulated at the same offered rates with the same
# workload (16 connections, sleep-mode bimodal service, hot connections where
# measured), and simulated p50 and p99 are set against measured ones up to 70%
# of capacity. Writes bench/results/<date>-sim-validation-<machine>.md with
# plots of measured and simulated curves together.
#
#   bench/sim-validate.sh [EMULATED_RESULTS_DIR]
#     (default bench/results/2026-11-23-emulated-2core; its calibration.env
#      gives the capacity; bench/sim/emulated-2core.calibration the step costs)
# Environment: REPEATS (3), CALIBRATION, NAME, MACHINE, BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-bench/results/2026-11-23-emulated-2core}
BIN=${BIN:-target/release}
REPEATS=${REPEATS:-3}
CALIBRATION=${CALIBRATION:-bench/sim/emulated-2core.calibration}
[ -x "$BIN/ramkv-sim" ] || cargo build --release -p ramkv-bench
source "$src/calibration.env"
# The measured runs' hot share (calibration.env records it since HOT existed).
hot_share=${hot:-2:0.5}
date=$(date -u +%F)
name=${NAME:-$date-sim-validation-${MACHINE:-$(nproc)core}}
out="bench/results/$name"
md="bench/results/$name.md"
mkdir -p "$out"

# The simulated architecture of each measured system. A shared socket hands
# connections to whichever dispatcher wakes first, so it is modelled as a
# random assignment, like reuseport's hash (a new draw per repeat).
arch_of() {
  case "$1" in
    lb-8) echo lb:1:8 ;; lb-16) echo lb:1:16 ;;
    inline-8-*) echo inline:8:hash ;; inline-16-*) echo inline:16:hash ;;
    thread-per-conn) echo tpc ;;
  esac
}
cap_of() { case "$1" in *-8|*-8-*) echo "$cap8" ;; *) echo "$cap16" ;; esac; }

for wl in hot bimodal; do
  for csv in "$src/$wl"/*.csv; do
    sys=$(basename "$csv" .csv)
    rates=$(awk -F, 'NR > 1 { printf "%s%s", sep, $1; sep = "," }' "$csv")
    hot=(); [ "$wl" = hot ] && hot=(--hot-conns "$hot_share")
    "$BIN/ramkv-sim" --arch "$sys=$(arch_of "$sys")" --sweep "$rates" --connections 16 ${hot[@]+"${hot[@]}"} \
      --service bimodal:0.9:500us:5ms --calibration "$CALIBRATION" --warmup 500ms --duration 2s --drain 1s \
      --repeat "$REPEATS" --out "$out/$wl" --title "$wl: $sys simulated" >/dev/null
    rm -f "$out/$wl.svg"
  done
done

python3 - "$src" "$out" "$md" "$cap8" "$cap16" "$REPEATS" "$CALIBRATION" "$(git rev-parse --short HEAD)" "$hot_share" <<'PY'
import csv, os, subprocess, sys
src, out, md, cap8, cap16, repeats, calib, commit, hot = sys.argv[1:]
cap = {8: float(cap8), 16: float(cap16)}
def rows(path):
    return list(csv.DictReader(open(path)))
lines = [
    "# ramkv-sim against the emulated runs",
    "",
    f"- Date: {os.popen('date -u +%F').read().strip()} (UTC), commit {commit}",
    f"- Measured: `{src}` (bench/emulated.sh: 16 connections, hot workload `--hot-conns {hot}`, service bimodal 90% 500 µs / 10% 5 ms slept, "
    "2 s measured after 500 ms warmup, 1 s drain, median of 3 runs)",
    f"- Simulated: `bench/sim-validate.sh {src}` (ramkv-sim with the same workload and window, median of {repeats} seeds), "
    f"step costs from `{calib}`: " + ", ".join(l.strip() for l in open(calib) if l.strip() and not l.startswith('#')),
    "- Architectures: lb-N is `lb:1:N`; inline-N (shared socket or reuseport) is `inline:N:hash` (connections "
    "spread at random, a new draw per seed); thread-per-conn is `tpc`.",
    "- Ratio = simulated / measured; ✓ within 25%. Loads up to 70% of capacity (threads ÷ mean service time).",
    "",
]
summary = []
for wl in ["hot", "bimodal"]:
    for f in sorted(os.listdir(os.path.join(src, wl))):
        sys_ = f[:-4]
        threads = 16 if "-16" in sys_ or sys_ == "thread-per-conn" else 8
        meas = rows(os.path.join(src, wl, f))
        sim = {r["offered_rate"]: r for r in rows(os.path.join(out, f"{wl}-{sys_}.csv"))}
        lines += [f"## {wl}: {sys_}", "", "| load | measured p50 / p99 µs [p99 interval] | simulated p50 / p99 µs | p50 ratio | p99 ratio | in the measured intervals ±25% |", "|---:|---:|---:|---:|---:|---:|"]
        ok = total = inside = 0
        for m in meas:
            load = float(m["offered_rate"]) / cap[threads]
            if load > 0.7001:
                continue
            s = sim.get(m["offered_rate"]) or sim.get(f'{float(m["offered_rate"]):.1f}')
            if s is None:
                continue
            r50 = float(s["p50_us"]) / float(m["p50_us"])
            r99 = float(s["p99_us"]) / float(m["p99_us"])
            mark = lambda r: f"{r:.2f} {'✓' if abs(r - 1) <= 0.25 else '✗'}"
            ok += (abs(r50 - 1) <= 0.25) + (abs(r99 - 1) <= 0.25); total += 2
            def within(col):
                lo, hi = m.get(col + "_lo") or m[col], m.get(col + "_hi") or m[col]
                return 0.75 * float(lo) <= float(s[col]) <= 1.25 * float(hi)
            both = within("p50_us") + within("p99_us")
            inside += both
            lines.append(f"| {load:.2f} | {float(m['p50_us']):.0f} / {float(m['p99_us']):.0f} [{float(m['p99_us_lo']):.0f}, {float(m['p99_us_hi']):.0f}] | {float(s['p50_us']):.0f} / {float(s['p99_us']):.0f} | {mark(r50)} | {mark(r99)} | {both} of 2 |")
        lines.append("")
        summary.append((wl, sys_, ok, inside, total))
        # Measured and simulated on one plot.
        subprocess.run(["target/release/ramkv-bench", "--plot", os.path.join(out, f"{wl}-{sys_}.svg"),
                        "--title", f"{wl}: {sys_}, measured and simulated",
                        "--series", f"measured={os.path.join(src, wl, f)}",
                        "--series", f"simulated={os.path.join(out, f'{wl}-{sys_}.csv')}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines += [f"![{wl} {sys_}]({os.path.basename(out)}/{wl}-{sys_}.svg)", ""]
head = ["## Summary", "", "| workload | system | p50 and p99 within 25% of the measured median (loads ≤ 0.7) | within the measured runs' interval ±25% |", "|---|---|---:|---:|"]
head += [f"| {w} | {s} | {o} of {t} | {i} of {t} |" for w, s, o, i, t in summary]
lines[8:8] = head + [""]
open(md, "w").write("\n".join(lines) + "\n")
print(md)
PY
