#!/usr/bin/env bash
# Projects each architecture onto 8, 16 and 64 cores with ramkv-sim, for
# CPU-bound service: uniform load, hot connections and bimodal service.
# Writes bench/results/<date>-sim-projection.md, with a plot per workload and
# core count, a table of the highest load each architecture sustains, how
# many dispatchers lb needs at each core count, and where one lb dispatcher
# saturates.
#
#   bench/sim-project.sh
#
# Model and assumptions (all stated in the results file):
# - step costs from CALIBRATION (default bench/sim/cpu-2core.calibration:
#   this VM's CPU per request, measured by bench/efficiency.sh);
# - a fast request needs FAST of a core on top of its dispatch cost, and
#   runs on lb's dispatcher while no worker is ready (ramkv's quick path);
#   bimodal: 0.5% of requests need SLOW instead;
# - 4 connections per core; hot: 2 connections carry half the requests;
# - load is a fraction of the ideal capacity N / (dispatch + mean service);
# - an architecture sustains a load when p99 ≤ SLO_US with no timeouts and
#   95% of the offered rate achieved.
# Environment: CORES ("8 16 64"), LOADS, FAST (1us), SLOW (500us), SLO_US
# (100), REPEATS (3), CALIBRATION, NAME, BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
CORES=${CORES:-"8 16 64"}
LOADS=${LOADS:-"0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9"}
FAST=${FAST:-1us}
SLOW=${SLOW:-500us}
SLO_US=${SLO_US:-100}
REPEATS=${REPEATS:-3}
CALIBRATION=${CALIBRATION:-bench/sim/cpu-2core.calibration}
[ -x "$BIN/ramkv-sim" ] || cargo build --release -p ramkv-bench
date=$(date -u +%F)
name=${NAME:-$date-sim-projection}
out="bench/results/$name"
md="bench/results/$name.md"
mkdir -p "$out"

cost() { awk -F= -v k="$1" '$1 == k { print $2 }' "$CALIBRATION"; }
dispatch=$(cost dispatch_us)
fast_us=${FAST%us}
slow_us=${SLOW%us}
# Mean service µs of each workload.
mean_of() { case "$1" in bimodal) awk -v f="$fast_us" -v s="$slow_us" 'BEGIN { print 0.995 * f + 0.005 * s }' ;; *) echo "$fast_us" ;; esac; }
service_of() { case "$1" in bimodal) echo "bimodal:0.995:$FAST:$SLOW" ;; *) echo "fixed:$FAST" ;; esac; }
hot_of() { [ "$1" = hot ] && echo "--hot-conns 2:0.5" || true; }
# Offered rates of the sweep at N cores for a workload.
rates_of() { awk -v n="$1" -v d="$dispatch" -v m="$(mean_of "$2")" -v loads="$LOADS" \
  'BEGIN { c = n * 1e6 / (d + m); k = split(loads, l, " "); for (i = 1; i <= k; i++) printf "%s%.0f", (i > 1 ? "," : ""), l[i] * c }'; }

# The simulator, with this run's costs and window. The window is short (the
# rates are high); 3 seeds per point give medians and intervals.
sim() {
  "$BIN/ramkv-sim" --calibration "$CALIBRATION" --quick "$FAST" --cpu-bound --warmup 20ms --duration 100ms \
    --drain 50ms --repeat "$REPEATS" "$@" >/dev/null
}

# Highest offered rate in a CSV that met the SLO.
sustained() {
  awk -F, -v slo="$SLO_US" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["p99_us"] != "" && $c["p99_us"] <= slo && $c["timeouts"] == 0 && $c["achieved_rate"] >= 0.95 * $c["offered_rate"] &&
    $c["offered_rate"] > b { b = $c["offered_rate"] } END { print b + 0 }' "$1"
}

for wl in uniform hot bimodal; do
  for n in $CORES; do
    rates=$(rates_of "$n" "$wl")
    conns=$((4 * n))
    common=(--connections "$conns" --service "$(service_of "$wl")" --cores "$n" --sweep "$rates")
    read -r -a hot <<< "$(hot_of "$wl")"
    # lb's split: every D from one to three quarters of the cores in eighths,
    # and one (the default); the D that sustains the most load, fewest first.
    best_d=1 best=-1
    for d in 1 $(seq "$((n / 8))" "$((n / 8))" "$((3 * n / 4))"); do
      [ "$d" -ge 1 ] && [ "$d" -lt "$n" ] || continue
      sim --arch "lb-$d=lb:$d:$((n - d))" "${common[@]}" ${hot[@]+"${hot[@]}"} --out "$out/split-$wl-$n"
      s=$(sustained "$out/split-$wl-$n-lb-$d.csv")
      echo "$wl $n lb:$d:$((n - d)) sustains $s/s" >&2
      if awk -v s="$s" -v b="$best" 'BEGIN { exit !(s > b) }'; then best=$s best_d=$d; fi
    done
    rm -f "$out/split-$wl-$n.svg"
    sim --arch single=single --arch "inline-$n-reuseport=inline:$n:hash" --arch "inline-$n-even=inline:$n:rr" \
      --arch "thread-per-conn=tpc" --arch "lb-1=lb:1:$((n - 1))" --arch "lb-$best_d=lb:$best_d:$((n - best_d))" \
      "${common[@]}" ${hot[@]+"${hot[@]}"} --out "$out/$wl-$n" --title "$wl, $n cores (simulated)"
    echo "$best_d" > "$out/$wl-$n.best-d"
  done
done

# One dispatcher's saturation: lb:1:7 on 8 cores, uniform, rates in steps of
# 5,000/s, with and without the quick path. A 1 s window with a 50 ms drain:
# 5% past saturation leaves more backlog than the drain clears.
sat_rates=$(seq -s, 20000 5000 250000)
sat=(--calibration "$CALIBRATION" --cpu-bound --warmup 100ms --duration 1s --drain 50ms --repeat "$REPEATS"
  --connections 32 --service "fixed:$FAST" --cores 8 --sweep "$sat_rates")
"$BIN/ramkv-sim" "${sat[@]}" --quick "$FAST" --arch "quick=lb:1:7" --out "$out/saturation" >/dev/null
"$BIN/ramkv-sim" "${sat[@]}" --arch "handed-off=lb:1:7" --out "$out/saturation-no-quick" >/dev/null

python3 - "$out" "$md" "$CALIBRATION" "$CORES" "$FAST" "$SLOW" "$SLO_US" "$REPEATS" "$(git rev-parse --short HEAD)" "$LOADS" <<'PY'
import csv, glob, os, sys
out, md, calib, cores, fast, slow, slo, repeats, commit, loads = sys.argv[1:]
cores = [int(c) for c in cores.split()]
costs = {l.split("=")[0]: float(l.split("=")[1]) for l in open(calib) if "=" in l and not l.startswith("#")}
d, h = costs.get("dispatch_us", 0), costs.get("handoff_us", 0)
def rows(p): return list(csv.DictReader(open(p)))
def sustained(p):
    b = 0
    for r in rows(p):
        if r["p99_us"] and float(r["p99_us"]) <= float(slo) and int(float(r["timeouts"])) == 0 \
           and float(r["achieved_rate"]) >= 0.95 * float(r["offered_rate"]):
            b = max(b, float(r["offered_rate"]))
    return b
fast_us, slow_us = float(fast.rstrip("us")), float(slow.rstrip("us"))
mean = {"uniform": fast_us, "hot": fast_us, "bimodal": 0.995 * fast_us + 0.005 * slow_us}
L = [
    "# What to expect on bigger machines: ramkv-sim projections",
    "",
    f"- Date: {os.popen('date -u +%F').read().strip()} (UTC), commit {commit}; command: `bench/sim-project.sh`",
    "- **Simulated, not measured.** No machine with more than 2 cores was available; the model is "
    "[validated](2026-12-06-sim-validation-even-hot30-2core-c.md) against emulated runs on 2 cores (with the same "
    "placement in every run and each run's measured service time, p50 and p99 within 25% of the median of 15 runs "
    "at every load up to 70%, for every architecture: 78 of 78 figures). An inline dispatcher takes its connections "
    "in turns of what one read brought in, at most 128 requests (tokio's cooperative budget), as ramkv's do.",
    f"- Step costs (`{calib}`): " + ", ".join(f"{k} {v:g} µs" for k, v in costs.items()) +
    ". dispatch and handoff are this VM's CPU per request (bench/efficiency.sh: inline-1 and lb with "
    "`--no-quick-path` at 16 connections on one core); a bare-metal core with a newer kernel should spend less on each.",
    f"- CPU-bound service: a fast request needs {fast} of a core beyond its dispatch cost and, under lb, runs on "
    "its dispatcher while no worker is ready (the quick path, as ramkv runs GETs). "
    f"Workloads: **uniform** (all fast, 4 connections per core, equal rates); **hot** (the same, but 2 connections carry "
    f"half the requests); **bimodal** (0.5% of requests need {slow} instead).",
    f"- Load = offered rate ÷ ideal capacity, N ÷ (dispatch + mean service): {', '.join(f'{w} {1e6/(d+m):,.0f}/s per core' for w, m in mean.items())}. "
    f"Loads {loads.replace(' ', ', ')}; {repeats} seeds per point (medians).",
    f"- *Sustains* = the highest load with p99 ≤ {slo} µs, no timeouts and ≥ 95% of the offered rate achieved. "
    "lb-D is D dispatchers and N − D workers; lb-1 is the default (`--dispatchers 1`); the best D was searched "
    "among 1 and N/8, N/4, … 3N/4. inline-N-reuseport assigns connections at random (SO_REUSEPORT's hash), "
    "inline-N-even deals them out evenly (a best case no kernel promises). thread-per-conn's threads share the N cores, "
    "with no cost for context switches modelled: its curve is a bound, not a forecast.",
    "- Not modelled: cache and memory-bandwidth effects, lock contention in the store, the kernel's network "
    "processing on other cores, batching several requests per system call, spinning workers.",
    "",
    "## Highest load sustained",
    "",
    "| workload | cores | single | inline-N-reuseport | inline-N-even | thread-per-conn | lb-1 (default) | best lb (D) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
sections = []
for wl in ["uniform", "hot", "bimodal"]:
    for n in cores:
        cap = n * 1e6 / (d + mean[wl])
        best_d = open(f"{out}/{wl}-{n}.best-d").read().strip()
        names = ["single", f"inline-{n}-reuseport", f"inline-{n}-even", "thread-per-conn", "lb-1", f"lb-{best_d}"]
        cells = []
        for s in names:
            v = sustained(f"{out}/{wl}-{n}-{s}.csv") / cap
            cells.append(f"{v:.1f}" if v else "< 0.1")
        cells[-1] += f" (D = {best_d})"
        L.append(f"| {wl} | {n} | " + " | ".join(cells) + " |")
        sec = [f"### {wl}, {n} cores", "", f"p99 µs by load (capacity {cap:,.0f}/s).", "",
               "| load | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        data = {s: rows(f"{out}/{wl}-{n}-{s}.csv") for s in names}
        for i, load in enumerate(loads.split()):
            def cell(r):
                if not r["p99_us"]: return "all timed out"
                t = int(float(r["timeouts"]))
                return f"{float(r['p99_us']):,.0f}" + (" (timeouts)" if t else "")
            sec.append(f"| {load} | " + " | ".join(cell(data[s][i]) for s in names) + " |")
        splits = sorted(glob.glob(f"{out}/split-{wl}-{n}-lb-*.csv"), key=lambda p: int(p.rsplit("-", 1)[1][:-4]))
        sec += ["", "lb's split, highest load sustained by D: " + ", ".join(
            f"D = {p.rsplit('-', 1)[1][:-4]}: {sustained(p) / cap:.1f}" for p in splits) + ".",
            "", f"![{wl} {n}]({os.path.basename(out)}/{wl}-{n}.svg)", ""]
        sections += sec
def keeps_up(p):
    """Highest offered rate answered in full (no timeouts, 95% achieved), whatever its p99."""
    b = 0
    for r in rows(p):
        if int(float(r["timeouts"])) == 0 and float(r["achieved_rate"]) >= 0.95 * float(r["offered_rate"]):
            b = max(b, float(r["offered_rate"]))
    return b
sat = {k: f"{out}/saturation{k}.csv" for k in ["-quick", "-no-quick-handed-off"]}
def need(wl, n):
    best = open(f"{out}/{wl}-{n}.best-d").read().strip()
    if sustained(f"{out}/{wl}-{n}-lb-{best}.csv") == 0:
        return f"none meets the SLO at {n}"
    return f"{best} of {n}"
L += ["", "## Where one lb dispatcher saturates", "",
      f"One dispatcher does dispatch ({d:g} µs) for every request, and either the hand-off ({h:g} µs) or, on the quick "
      f"path, the request itself ({fast}). So it saturates near 1 ÷ {d + h:g} µs = {1e6/(d+h):,.0f}/s with every request "
      f"handed off, near 1 ÷ {d + fast_us:g} µs = {1e6/(d+fast_us):,.0f}/s with every request quick. Simulated (lb:1:7, "
      f"uniform, rates in steps of 5,000/s): with the quick path it keeps up to {keeps_up(sat['-quick']):,.0f}/s and meets "
      f"p99 ≤ {slo} µs up to {sustained(sat['-quick']):,.0f}/s; without it, {keeps_up(sat['-no-quick-handed-off']):,.0f}/s "
      f"and {sustained(sat['-no-quick-handed-off']):,.0f}/s.",
      "", "Dispatchers needed (the D that sustained the most load; the smallest such D): " + "; ".join(
          f"{wl}: " + ", ".join(need(wl, n) for n in cores)
          for wl in ["uniform", "hot", "bimodal"]) +
      f". With requests this short, reading and answering is most of the work ({d:g} µs against {fast}), so most cores "
      "must dispatch; the longer the service, the fewer dispatchers lb needs.",
      "", "## Curves", ""]
L += sections
open(md, "w").write("\n".join(L) + "\n")
print(md)
PY
