//! Presenting results: one [`Point`] per offered rate (one run, or the
//! median of `--repeat` runs), as a table, one JSON object, a CSV row, and an
//! SVG plot of tail latency against throughput.
//!
//! Figures that a run cannot define (a percentile with no replies, the
//! adherence of a closed loop) are `null` in JSON and empty in CSV, never NaN.

use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{MIN_ADHERENCE, RunResult, WARN_ADHERENCE};
use crate::stats::{self, Estimate};

/// A generator thread busier than this was the limit of its own run.
pub const LIMITED_BUSY: f64 = 0.9;

/// Errors of one status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusCount {
    /// The status label (`INVALID_REQUEST`, `SERVER_ERROR`, `DISCONNECTED`…).
    pub status: String,
    /// How many.
    pub count: u64,
    /// The first message the server gave with it.
    pub message: String,
}

/// The figures of one run, latencies in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Requests per second asked for (0 in closed loop).
    pub offered_rate: f64,
    /// Successful replies per second.
    pub achieved_rate: f64,
    /// Successful replies.
    pub completed: u64,
    /// Error replies and requests lost with their connection.
    pub errors: u64,
    /// Requests never answered.
    pub timeouts: u64,
    /// Mean latency (for comparison with tools that report means).
    pub mean_us: Option<f64>,
    /// Latency percentiles, from scheduled send to reply; `None` without replies.
    pub p50_us: Option<f64>,
    /// 90th percentile.
    pub p90_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// 99.99th percentile.
    pub p9999_us: Option<f64>,
    /// Slowest reply.
    pub max_us: Option<f64>,
    /// Errors by status, most common first.
    pub errors_by_status: Vec<StatusCount>,
    /// Share of requests sent within `on_time_us` of schedule (open loop).
    pub adherence: Option<f64>,
    /// The on-time threshold.
    pub on_time_us: f64,
    /// Send lateness percentiles (open loop).
    pub late_p50_us: Option<f64>,
    /// 99th percentile of send lateness.
    pub late_p99_us: Option<f64>,
    /// 99.9th percentile of send lateness.
    pub late_p999_us: Option<f64>,
    /// Latest send.
    pub late_max_us: Option<f64>,
    /// Adherence below 99.9%: the latencies include the generator's delay.
    pub generator_late: bool,
    /// Adherence at least 95%: the run offered the load it claims.
    pub valid: bool,
    /// The generator's CPU (getrusage), in cores.
    pub generator_cpu: f64,
    /// The busiest generator thread's CPU per wall second.
    pub generator_busiest_thread: f64,
    /// Times the kernel preempted the generator threads.
    pub generator_preempted: u64,
    /// The generator itself was the limit (a thread near 100% busy).
    pub generator_limited: bool,
    /// Each connection's server dispatcher (`--admin`); for one run only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::placement::Placement>,
    /// The server's mean service time during the run (`--admin`), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_service_us: Option<f64>,
    /// The mean service time the run's requests asked for (`--service`), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_service_us: Option<f64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

impl Summary {
    /// Summarises one run; `on_time` is the adherence threshold it used.
    pub fn of(r: &RunResult, on_time: std::time::Duration) -> Summary {
        let has = !r.latency.is_empty();
        let q = |q: f64| has.then(|| us(r.latency.value_at_quantile(q)));
        let sent = r.sent > 0;
        let late = |q: f64| sent.then(|| us(r.lateness.value_at_quantile(q)));
        let adherence = r.adherence();
        Summary {
            offered_rate: r.offered_rate,
            achieved_rate: r.achieved_rate(),
            completed: r.completed,
            errors: r.errors.total(),
            timeouts: r.timeouts,
            mean_us: has.then(|| r.latency.mean() / 1e3),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: has.then(|| us(r.latency.max())),
            errors_by_status: r
                .errors
                .by_count()
                .into_iter()
                .map(|(status, count, message)| StatusCount {
                    status: status.to_string(),
                    count,
                    message: message.to_string(),
                })
                .collect(),
            adherence,
            on_time_us: on_time.as_secs_f64() * 1e6,
            late_p50_us: late(0.5),
            late_p99_us: late(0.99),
            late_p999_us: late(0.999),
            late_max_us: sent.then(|| us(r.lateness.max())),
            generator_late: adherence.is_some_and(|a| a < WARN_ADHERENCE),
            valid: adherence.is_none_or(|a| a >= MIN_ADHERENCE),
            generator_cpu: r.generator.cpu_cores,
            generator_busiest_thread: r.generator.busiest_thread,
            generator_preempted: r.generator.preempted,
            generator_limited: r.generator.busiest_thread >= LIMITED_BUSY,
            placement: r.placement.clone(),
            server_service_us: r.server_service_us,
            requested_service_us: r.requested_service_us,
        }
    }

    /// True when no request succeeded although some were answered or lost.
    pub fn all_failed(&self) -> bool {
        self.completed == 0
    }
}

/// One point of a measurement: the median run of `repeats`, with intervals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Medians of the rates and percentiles; counts summed over the runs;
    /// the worst adherence; flags set if any run set them.
    #[serde(flatten)]
    pub summary: Summary,
    /// Runs behind this point.
    pub repeats: usize,
    /// Coverage of the intervals below (`None` for a single run).
    pub ci_level: Option<f64>,
    /// Confidence intervals `[lo, hi]` for the medians (`None` for a single run).
    pub achieved_rate_ci: Option<[f64; 2]>,
    /// Interval of p50.
    pub p50_us_ci: Option<[f64; 2]>,
    /// Interval of p90.
    pub p90_us_ci: Option<[f64; 2]>,
    /// Interval of p99.
    pub p99_us_ci: Option<[f64; 2]>,
    /// Interval of p99.9.
    pub p999_us_ci: Option<[f64; 2]>,
    /// Interval of p99.99.
    pub p9999_us_ci: Option<[f64; 2]>,
    /// Interval of the maximum.
    pub max_us_ci: Option<[f64; 2]>,
    /// Set by a sweep: this point's p99 fell below a lighter load's
    /// interval, so it shows the machine's noise rather than the server.
    pub noise: bool,
    /// The runs themselves, for [`runs_csv_rows`].
    #[serde(skip)]
    pub runs: Vec<Summary>,
}

impl Point {
    /// Combines the runs of one point.
    pub fn of(runs: &[Summary]) -> Option<Point> {
        let first = runs.first()?;
        let est = |f: fn(&Summary) -> Option<f64>| -> Option<Estimate> {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            stats::median_ci(&v)
        };
        let ci = |e: Option<Estimate>| e.filter(|_| runs.len() > 1).map(|e| [e.lo, e.hi]);
        let med = |e: Option<Estimate>| e.map(|e| e.median);
        let rate = est(|s| Some(s.achieved_rate));
        let pcts = [
            est(|s| s.p50_us),
            est(|s| s.p90_us),
            est(|s| s.p99_us),
            est(|s| s.p999_us),
            est(|s| s.p9999_us),
            est(|s| s.max_us),
        ];
        let mut errors = crate::engine::ErrorTally::default();
        for r in runs {
            for e in &r.errors_by_status {
                errors.add(&e.status, &e.message, e.count);
            }
        }
        let sum = |f: fn(&Summary) -> u64| runs.iter().map(f).sum::<u64>();
        let any = |f: fn(&Summary) -> bool| runs.iter().any(f);
        let median_of = |f: fn(&Summary) -> f64| {
            stats::median_ci(&runs.iter().map(f).collect::<Vec<_>>()).map_or(0.0, |e| e.median)
        };
        let summary = Summary {
            offered_rate: first.offered_rate,
            achieved_rate: med(rate).unwrap_or(0.0),
            completed: sum(|s| s.completed),
            errors: sum(|s| s.errors),
            timeouts: sum(|s| s.timeouts),
            mean_us: med(est(|s| s.mean_us)),
            p50_us: med(pcts[0]),
            p90_us: med(pcts[1]),
            p99_us: med(pcts[2]),
            p999_us: med(pcts[3]),
            p9999_us: med(pcts[4]),
            max_us: med(pcts[5]),
            errors_by_status: errors
                .by_count()
                .into_iter()
                .map(|(status, count, message)| StatusCount {
                    status: status.to_string(),
                    count,
                    message: message.to_string(),
                })
                .collect(),
            adherence: runs.iter().filter_map(|s| s.adherence).reduce(f64::min),
            on_time_us: first.on_time_us,
            late_p50_us: med(est(|s| s.late_p50_us)),
            late_p99_us: med(est(|s| s.late_p99_us)),
            late_p999_us: med(est(|s| s.late_p999_us)),
            late_max_us: runs.iter().filter_map(|s| s.late_max_us).reduce(f64::max),
            generator_late: any(|s| s.generator_late),
            valid: runs.iter().all(|s| s.valid),
            generator_cpu: median_of(|s| s.generator_cpu),
            generator_busiest_thread: median_of(|s| s.generator_busiest_thread),
            generator_preempted: sum(|s| s.generator_preempted),
            generator_limited: any(|s| s.generator_limited),
            placement: match runs {
                [one] => one.placement.clone(),
                _ => None,
            },
            server_service_us: med(est(|s| s.server_service_us)),
            requested_service_us: med(est(|s| s.requested_service_us)),
        };
        Some(Point {
            summary,
            repeats: runs.len(),
            ci_level: rate.filter(|_| runs.len() > 1).map(|e| e.level),
            achieved_rate_ci: ci(rate),
            p50_us_ci: ci(pcts[0]),
            p90_us_ci: ci(pcts[1]),
            p99_us_ci: ci(pcts[2]),
            p999_us_ci: ci(pcts[3]),
            p9999_us_ci: ci(pcts[4]),
            max_us_ci: ci(pcts[5]),
            noise: false,
            runs: runs.to_vec(),
        })
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        // Cannot fail: every field is a plain number, string, bool or list,
        // and serde_json writes a non-finite float as null.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The p99 interval the sweep's noise check compares.
    fn p99_interval(&self) -> Option<(f64, f64)> {
        match (self.p99_us_ci, self.summary.p99_us) {
            (Some([lo, hi]), _) => Some((lo, hi)),
            (None, Some(v)) => Some((v, v)),
            _ => None,
        }
    }

    /// A short line for progress output and sweeps.
    pub fn line(&self) -> String {
        let s = &self.summary;
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut line = format!(
            "rate {:>9.0}: achieved {:>9.0}/s  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>9} us  errors {} timeouts {}",
            s.offered_rate,
            s.achieved_rate,
            f(s.p50_us),
            f(s.p99_us),
            f(s.p999_us),
            f(s.max_us),
            s.errors,
            s.timeouts
        );
        if let Some(a) = s.adherence {
            let _ = write!(line, "  on time {:.2}%", a * 100.0);
        }
        for (flag, text) in [
            (!s.valid, "  INVALID"),
            (s.valid && s.generator_late, "  LATE"),
            (self.noise, "  NOISE"),
        ] {
            if flag {
                line.push_str(text);
            }
        }
        line
    }

    /// The human-readable table printed at the end of a run.
    pub fn table(&self) -> String {
        let s = &self.summary;
        let mut t = String::new();
        let row = |t: &mut String, name: &str, value: String| {
            let _ = writeln!(t, "{name:<18} {value}");
        };
        row(
            &mut t,
            "offered rate",
            if s.offered_rate > 0.0 {
                format!("{:.0}/s", s.offered_rate)
            } else {
                "closed loop".into()
            },
        );
        let with_ci = |v: String, ci: Option<[f64; 2]>, unit: &str| match ci {
            Some([lo, hi]) => format!("{v}{unit}  [{lo:.1}, {hi:.1}]"),
            None => format!("{v}{unit}"),
        };
        row(
            &mut t,
            "achieved rate",
            with_ci(
                format!("{:.0}", s.achieved_rate),
                self.achieved_rate_ci,
                "/s",
            ),
        );
        if self.repeats > 1 {
            row(
                &mut t,
                "repeats",
                format!(
                    "{} (medians; intervals cover the median with {:.1}% confidence)",
                    self.repeats,
                    self.ci_level.unwrap_or(0.0) * 100.0
                ),
            );
        }
        row(&mut t, "errors", s.errors.to_string());
        for e in &s.errors_by_status {
            row(
                &mut t,
                "",
                format!("{} × {}: {}", e.status, e.count, e.message),
            );
        }
        row(&mut t, "timeouts", s.timeouts.to_string());
        for (name, v, ci) in [
            ("p50", s.p50_us, self.p50_us_ci),
            ("p90", s.p90_us, self.p90_us_ci),
            ("p99", s.p99_us, self.p99_us_ci),
            ("p99.9", s.p999_us, self.p999_us_ci),
            ("p99.99", s.p9999_us, self.p9999_us_ci),
            ("max", s.max_us, self.max_us_ci),
        ] {
            let v = v.map_or("-".to_string(), |v| format!("{v:.1}"));
            row(&mut t, name, with_ci(v, ci, " us"));
        }
        if let Some(a) = s.adherence {
            row(
                &mut t,
                "on time",
                format!(
                    "{:.3}% sent within {:.0} us of schedule (lateness p50 {:.1}, p99 {:.1}, max {:.1} us)",
                    a * 100.0,
                    s.on_time_us,
                    s.late_p50_us.unwrap_or(0.0),
                    s.late_p99_us.unwrap_or(0.0),
                    s.late_max_us.unwrap_or(0.0)
                ),
            );
        }
        row(
            &mut t,
            "generator cpu",
            format!(
                "{:.1}% of one core (busiest thread {:.0}%, preempted {} times)",
                s.generator_cpu * 100.0,
                s.generator_busiest_thread * 100.0,
                s.generator_preempted
            ),
        );
        t.pop();
        t
    }

    /// What the user should know about this point, one sentence each:
    /// lateness and its likely cause, invalidity, and the commonest error.
    pub fn warnings(&self) -> Vec<String> {
        let s = &self.summary;
        let mut w = Vec::new();
        if let (Some(a), true) = (s.adherence, s.generator_late) {
            let mut msg = format!(
                "{} only {:.2}% of requests left within {:.0} us of their schedule (p99 lateness {:.0} us), so the latencies include the generator's own delay.",
                if s.valid { "warning:" } else { "INVALID RUN:" },
                a * 100.0,
                s.on_time_us,
                s.late_p99_us.unwrap_or(0.0)
            );
            if s.generator_limited {
                let _ = write!(
                    msg,
                    " The generator is the limit (its busiest thread used {:.0}% of a core): add --threads or lower --rate.",
                    s.generator_busiest_thread * 100.0
                );
            } else {
                let _ = write!(
                    msg,
                    " The generator was not the limit (busiest thread {:.0}% of a core) but lost its CPU {} times: the machine is busy, for example with the server on the same cores. Pin the two apart (taskset), or give the generator a core of its own with --pacing spin.",
                    s.generator_busiest_thread * 100.0,
                    s.generator_preempted
                );
            }
            w.push(msg);
        }
        if let Some(e) = s.errors_by_status.first() {
            w.push(format!(
                "errors: {} × {}: {}",
                e.status,
                e.count,
                if e.message.is_empty() {
                    "(no message)"
                } else {
                    &e.message
                }
            ));
        }
        w
    }
}

/// Marks the points of a sweep (in the order given) whose p99 fell below a
/// lighter load's interval; points are compared in offered-rate order.
pub fn flag_noise(points: &mut [Point]) {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| {
        points[a]
            .summary
            .offered_rate
            .total_cmp(&points[b].summary.offered_rate)
    });
    let with_p99: Vec<usize> = order
        .into_iter()
        .filter(|&i| points[i].p99_interval().is_some())
        .collect();
    let intervals: Vec<(f64, f64)> = with_p99
        .iter()
        .filter_map(|&i| points[i].p99_interval())
        .collect();
    for (&i, noise) in with_p99
        .iter()
        .zip(stats::falls_below_lighter_load(&intervals))
    {
        points[i].noise = noise;
    }
}

/// The CSV columns, in the order of [`csv_row`].
pub const CSV_HEADER: &str = "offered_rate,achieved_rate,achieved_rate_lo,achieved_rate_hi,completed,errors,timeouts,p50_us,p50_us_lo,p50_us_hi,p90_us,p99_us,p99_us_lo,p99_us_hi,p999_us,p999_us_lo,p999_us_hi,p9999_us,max_us,adherence,late_p99_us,generator_late,valid,noise,generator_cpu,repeats";

/// One CSV row under [`CSV_HEADER`]; an undefined figure is an empty field.
pub fn csv_row(p: &Point) -> String {
    let s = &p.summary;
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    let lo = |ci: Option<[f64; 2]>| o(ci.map(|c| c[0]));
    let hi = |ci: Option<[f64; 2]>| o(ci.map(|c| c[1]));
    [
        format!("{:.1}", s.offered_rate),
        format!("{:.1}", s.achieved_rate),
        lo(p.achieved_rate_ci),
        hi(p.achieved_rate_ci),
        s.completed.to_string(),
        s.errors.to_string(),
        s.timeouts.to_string(),
        o(s.p50_us),
        lo(p.p50_us_ci),
        hi(p.p50_us_ci),
        o(s.p90_us),
        o(s.p99_us),
        lo(p.p99_us_ci),
        hi(p.p99_us_ci),
        o(s.p999_us),
        lo(p.p999_us_ci),
        hi(p.p999_us_ci),
        o(s.p9999_us),
        o(s.max_us),
        s.adherence.map_or(String::new(), |a| format!("{a:.5}")),
        o(s.late_p99_us),
        s.generator_late.to_string(),
        s.valid.to_string(),
        p.noise.to_string(),
        format!("{:.3}", s.generator_cpu),
        p.repeats.to_string(),
    ]
    .join(",")
}

/// The header of a sweep's per-run CSV (`OUT-runs.csv`): one row per run,
/// with the connections' dispatchers when `--admin` gave them.
pub const RUNS_CSV_HEADER: &str = "offered_rate,run,achieved_rate,completed,errors,timeouts,p50_us,p90_us,p99_us,p999_us,max_us,adherence,valid,placement,server_service_us,requested_service_us";

/// The rows of one point's runs under [`RUNS_CSV_HEADER`].
pub fn runs_csv_rows(p: &Point) -> Vec<String> {
    let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    p.runs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            [
                format!("{:.1}", s.offered_rate),
                i.to_string(),
                format!("{:.1}", s.achieved_rate),
                s.completed.to_string(),
                s.errors.to_string(),
                s.timeouts.to_string(),
                o(s.p50_us),
                o(s.p90_us),
                o(s.p99_us),
                o(s.p999_us),
                o(s.max_us),
                s.adherence.map_or(String::new(), |a| format!("{a:.5}")),
                s.valid.to_string(),
                s.placement
                    .as_ref()
                    .map_or(String::new(), crate::placement::field),
                o(s.server_service_us),
                o(s.requested_service_us),
            ]
            .join(",")
        })
        .collect()
}

/// What a plot needs of one point, read back from a sweep's CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotPoint {
    /// Offered rate.
    pub offered: f64,
    /// Achieved rate (the x axis).
    pub achieved: f64,
    /// p99, µs.
    pub p99: Option<f64>,
    /// p99.9, µs.
    pub p999: Option<f64>,
    /// The p99 interval, when the point was repeated.
    pub p99_ci: Option<[f64; 2]>,
    /// Adherence below 99.9%.
    pub late: bool,
    /// Adherence below 95%.
    pub invalid: bool,
    /// Flagged as noise by its sweep.
    pub noise: bool,
}

impl PlotPoint {
    /// From a point just measured.
    pub fn of(p: &Point) -> PlotPoint {
        PlotPoint {
            offered: p.summary.offered_rate,
            achieved: p.summary.achieved_rate,
            p99: p.summary.p99_us,
            p999: p.summary.p999_us,
            p99_ci: p.p99_us_ci,
            late: p.summary.generator_late,
            invalid: !p.summary.valid,
            noise: p.noise,
        }
    }

    /// Reads the points of a CSV written with [`CSV_HEADER`] (columns are
    /// found by name, so older files with fewer columns still plot).
    pub fn from_csv(text: &str) -> Result<Vec<PlotPoint>, String> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or("empty CSV")?.split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let need = |name: &str| col(name).ok_or(format!("the CSV has no '{name}' column"));
        let (offered, achieved) = (need("offered_rate")?, need("achieved_rate")?);
        let (p99, p999) = (need("p99_us")?, need("p999_us")?);
        let opt = |name: &str| col(name);
        let (lo, hi) = (opt("p99_us_lo"), opt("p99_us_hi"));
        let (late, valid, noise) = (opt("generator_late"), opt("valid"), opt("noise"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.trim().split(',').collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
                let flag =
                    |i: Option<usize>| i.and_then(|i| f.get(i)).is_some_and(|v| *v == "true");
                Ok(PlotPoint {
                    offered: num(offered).ok_or(format!("bad row: {l}"))?,
                    achieved: num(achieved).ok_or(format!("bad row: {l}"))?,
                    p99: num(p99),
                    p999: num(p999),
                    p99_ci: lo.zip(hi).and_then(|(lo, hi)| Some([num(lo)?, num(hi)?])),
                    late: flag(late),
                    invalid: valid.is_some_and(|i| f.get(i).is_some_and(|v| *v == "false")),
                    noise: flag(noise),
                })
            })
            .collect()
    }
}

/// One curve: a label and its points.
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// One point per swept rate.
    pub points: Vec<PlotPoint>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// 1-2-5 ticks between `lo` and `hi` on a log axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A round step giving about `n` ticks up to `max`.
fn linear_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Draws p99 (solid) and p99.9 (dashed) latency against achieved throughput
/// for each series, with a logarithmic latency axis. Each measured point is
/// marked; a late point (adherence below 99.9%) is drawn hollow, an invalid
/// one (below 95%) as a cross, and a point flagged as noise in grey; a
/// repeated point gets its p99 interval as an error bar.
pub fn svg_plot(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 560.0, 80.0, 250.0, 50.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let xmax_data = pts.clone().map(|p| p.achieved).fold(1.0, f64::max);
    let step = linear_step(xmax_data * 1.05, 6.0);
    let xmax = (xmax_data * 1.05 / step).ceil() * step;
    let ys = pts
        .flat_map(|p| {
            [
                p.p99,
                p.p999,
                p.p99_ci.map(|c| c[0]),
                p.p99_ci.map(|c| c[1]),
            ]
        })
        .flatten()
        .filter(|v| *v > 0.0);
    let ymin = ys.clone().fold(f64::INFINITY, f64::min);
    let ymax = ys.fold(0.0, f64::max);
    let (ymin, ymax) = if ymin.is_finite() {
        (ymin, ymax)
    } else {
        (1.0, 10.0)
    };
    let (lmin, lmax) = (
        ymin.log10().floor(),
        ymax.log10().ceil().max(ymin.log10().floor() + 1.0),
    );
    let x = |v: f64| left + v / xmax * (w - left - right);
    let floor = 10f64.powf(lmin);
    let y = |v: f64| top + (lmax - v.max(floor).log10()) / (lmax - lmin) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="26" font-size="15" text-anchor="middle">{}</text>"#,
        (w - right + left) / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<g stroke="black"><line x1="{left}" y1="{}" x2="{}" y2="{}"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}"/></g>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for v in log_ticks(floor, 10f64.powf(lmax)) {
        let major = (v.log10().fract()).abs() < 1e-9;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            y(v),
            y(v),
            if major { "#ccc" } else { "#eee" },
            left - 6.0,
            y(v) + 4.0,
            fmt_num(v)
        );
    }
    let mut v = 0.0;
    while v <= xmax * 1.0001 {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            x(v),
            x(v),
            h - bottom,
            x(v),
            h - bottom + 18.0,
            fmt_num(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">achieved throughput (requests/s)</text>"#,
        (w - right + left) / 2.0,
        h - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">latency (µs, log scale)</text>"#,
        (h - bottom + top) / 2.0
    );
    for (i, ser) in series.iter().enumerate() {
        draw_series(&mut s, ser, COLORS[i % COLORS.len()], &x, &y);
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"/><circle cx="{}" cy="{ly}" r="3.5" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            w - right + 40.0,
            COLORS[i % COLORS.len()],
            w - right + 26.0,
            COLORS[i % COLORS.len()],
            w - right + 46.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    let ly = top + 24.0 + series.len() as f64 * 20.0;
    for (k, line) in [
        "solid: p99, dashed: p99.9",
        "filled: on schedule",
        "hollow: generator late (< 99.9%)",
        "cross: invalid run (< 95%)",
        "grey: p99 within noise",
        "bar: p99 interval (--repeat)",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555">{line}</text>"##,
            w - right + 12.0,
            ly + k as f64 * 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn draw_series(
    s: &mut String,
    ser: &Series,
    color: &str,
    x: &impl Fn(f64) -> f64,
    y: &impl Fn(f64) -> f64,
) {
    let mut sorted = ser.points.clone();
    sorted.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    for (pick, dash) in [
        ((|p: &PlotPoint| p.p99) as fn(&PlotPoint) -> Option<f64>, ""),
        (|p: &PlotPoint| p.p999, r#" stroke-dasharray="6 4""#),
    ] {
        let path: Vec<String> = sorted
            .iter()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(p.achieved), y(pick(p)?))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
    }
    for p in &sorted {
        let Some(v) = p.p99 else { continue };
        let (cx, cy) = (x(p.achieved), y(v));
        if let Some([lo, hi]) = p.p99_ci {
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}"/>"#,
                y(lo),
                y(hi)
            );
        }
        let fill = if p.noise { "#999" } else { color };
        if p.invalid {
            let _ = writeln!(
                s,
                r#"<path d="M{:.1},{:.1}l8,8m0,-8l-8,8" stroke="{fill}" stroke-width="2"/>"#,
                cx - 4.0,
                cy - 4.0
            );
        } else if p.late {
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="white" stroke="{fill}" stroke-width="2"/>"#
            );
        } else {
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" fill="{fill}"/>"#
            );
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        let m = v / 1e6;
        if m.fract() == 0.0 {
            format!("{m:.0}M")
        } else {
            format!("{m:.1}M")
        }
    } else if v >= 1e3 {
        let k = v / 1e3;
        if k.fract() == 0.0 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rate: f64, p99: Option<f64>) -> Summary {
        Summary {
            offered_rate: rate,
            achieved_rate: rate,
            completed: 100,
            errors: 0,
            timeouts: 0,
            mean_us: p99.map(|v| v / 4.0),
            p50_us: p99.map(|v| v / 5.0),
            p90_us: p99.map(|v| v / 2.0),
            p99_us: p99,
            p999_us: p99.map(|v| v * 2.0),
            p9999_us: p99.map(|v| v * 3.0),
            max_us: p99.map(|v| v * 4.0),
            errors_by_status: vec![],
            adherence: Some(1.0),
            on_time_us: 50.0,
            late_p50_us: Some(1.0),
            late_p99_us: Some(5.0),
            late_p999_us: Some(9.0),
            late_max_us: Some(20.0),
            generator_late: false,
            valid: true,
            generator_cpu: 0.05,
            generator_busiest_thread: 0.05,
            generator_preempted: 0,
            generator_limited: false,
            placement: None,
            server_service_us: None,
            requested_service_us: None,
        }
    }

    fn point(rate: f64, p99: f64) -> Point {
        Point::of(&[summary(rate, Some(p99))]).unwrap()
    }

    #[test]
    fn csv_round_trips_what_the_plot_needs() {
        let mut p = Point::of(&[
            summary(1000.0, Some(40.0)),
            summary(1000.0, Some(50.0)),
            summary(1000.0, Some(70.0)),
        ])
        .unwrap();
        p.summary.generator_late = true;
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        let row = csv_row(&p);
        assert_eq!(row.split(',').count(), header.len());
        let back = PlotPoint::from_csv(&format!("{CSV_HEADER}\n{row}\n")).unwrap();
        assert_eq!(back, vec![PlotPoint::of(&p)]);
        assert_eq!(back[0].p99_ci, Some([40.0, 70.0]));
    }

    #[test]
    fn degenerate_runs_make_valid_json_without_nan() {
        // No replies at all: percentiles are null, never NaN or 0.
        let mut s = summary(1000.0, None);
        s.completed = 0;
        s.adherence = None;
        let p = Point::of(&[s]).unwrap();
        let json = p.json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["p99_us"].is_null() && v["adherence"].is_null(), "{json}");
        assert!(!json.contains("NaN") && !json.contains("inf"));
        assert!(p.summary.all_failed());
        assert!(csv_row(&p).split(',').nth(11) == Some(""));
    }

    #[test]
    fn repeats_report_medians_and_intervals() {
        let runs: Vec<Summary> = [30.0, 10.0, 20.0, 50.0, 40.0]
            .iter()
            .map(|&p99| summary(500.0, Some(p99)))
            .collect();
        let p = Point::of(&runs).unwrap();
        assert_eq!(p.summary.p99_us, Some(30.0));
        assert_eq!(p.p99_us_ci, Some([10.0, 50.0]));
        assert_eq!(p.summary.completed, 500, "counts add up over the runs");
        assert!((p.ci_level.unwrap() - 0.9375).abs() < 1e-9);
    }

    #[test]
    fn a_sweep_flags_a_p99_that_falls_as_the_load_rises() {
        let mut pts = vec![
            point(3000.0, 20.0),
            point(1000.0, 100.0),
            point(2000.0, 150.0),
        ];
        flag_noise(&mut pts);
        // In rate order: 100 (1k), 150 (2k), 20 (3k): the 3k point is noise.
        assert_eq!(
            pts.iter().map(|p| p.noise).collect::<Vec<_>>(),
            [true, false, false]
        );
    }

    #[test]
    fn late_points_say_who_is_to_blame() {
        let mut s = summary(2000.0, Some(100.0));
        s.adherence = Some(0.98);
        s.generator_late = true;
        s.generator_preempted = 1234;
        let w = Point::of(&[s.clone()]).unwrap().warnings();
        assert!(
            w[0].contains("not the limit") && w[0].contains("1234"),
            "{w:?}"
        );
        s.generator_limited = true;
        s.generator_busiest_thread = 0.97;
        let w = Point::of(&[s]).unwrap().warnings();
        assert!(w[0].contains("add --threads"), "{w:?}");
    }

    #[test]
    fn plots_mark_points_and_tick_readably() {
        let mut late = PlotPoint::of(&point(2000.0, 80.0));
        late.late = true;
        let mut bad = PlotPoint::of(&point(3000.0, 800.0));
        bad.invalid = true;
        let svg = svg_plot(
            "hot-conns <1>",
            &[Series {
                label: "lb".into(),
                points: vec![PlotPoint::of(&point(1000.0, 50.0)), late, bad],
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(
            svg.contains(r#"fill="white""#),
            "a hollow marker for the late point"
        );
        assert!(svg.contains("<path d="), "a cross for the invalid point");
        assert!(svg.contains("hot-conns &lt;1&gt;") && svg.ends_with("</svg>\n"));
        assert_eq!(
            log_ticks(10.0, 1000.0),
            [10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(linear_step(31_000.0, 6.0), 10_000.0);
    }
}
