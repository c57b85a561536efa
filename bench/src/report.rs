//! Presenting results: the final table, one JSON object per run, CSV rows
//! for sweeps, and an SVG plot of tail latency against throughput.

use std::fmt::Write as _;

use super::engine::RunResult;

/// The figures of one run, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Requests per second asked for (0 in closed loop).
    pub offered_rate: f64,
    /// Successful replies per second.
    pub achieved_rate: f64,
    /// Error replies.
    pub errors: u64,
    /// Requests never answered.
    pub timeouts: u64,
    /// Median latency, from scheduled send to reply.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Slowest reply.
    pub max_us: f64,
    /// 99th percentile of how late the generator sent.
    pub late_p99_us: f64,
    /// The generator fell behind its schedule.
    pub generator_late: bool,
    /// Generator CPU, in cores.
    pub generator_cpu: f64,
}

impl From<&RunResult> for Summary {
    fn from(r: &RunResult) -> Self {
        let q = |q: f64| r.latency.value_at_quantile(q) as f64 / 1e3;
        Summary {
            offered_rate: r.offered_rate,
            achieved_rate: r.achieved_rate,
            errors: r.errors,
            timeouts: r.timeouts,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: r.latency.max() as f64 / 1e3,
            late_p99_us: r.lateness.value_at_quantile(0.99) as f64 / 1e3,
            generator_late: r.generator_late,
            generator_cpu: r.generator_cpu,
        }
    }
}

impl Summary {
    /// Every field, named, formatted once for both JSON and CSV.
    fn fields(&self) -> [(&'static str, String); 13] {
        [
            ("offered_rate", format!("{:.1}", self.offered_rate)),
            ("achieved_rate", format!("{:.1}", self.achieved_rate)),
            ("errors", self.errors.to_string()),
            ("timeouts", self.timeouts.to_string()),
            ("p50_us", format!("{:.2}", self.p50_us)),
            ("p90_us", format!("{:.2}", self.p90_us)),
            ("p99_us", format!("{:.2}", self.p99_us)),
            ("p999_us", format!("{:.2}", self.p999_us)),
            ("p9999_us", format!("{:.2}", self.p9999_us)),
            ("max_us", format!("{:.2}", self.max_us)),
            ("generator_late", self.generator_late.to_string()),
            ("generator_cpu", format!("{:.3}", self.generator_cpu)),
            ("generator_late_p99_us", format!("{:.2}", self.late_p99_us)),
        ]
    }

    /// One JSON object (no external serializer needed for flat numbers).
    pub fn json(&self) -> String {
        let body: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The CSV columns, in the order of [`Summary::csv_row`].
    pub const CSV_HEADER: &'static str = "offered_rate,achieved_rate,errors,timeouts,p50_us,p90_us,p99_us,p999_us,p9999_us,max_us,generator_late,generator_cpu";

    /// One CSV row matching [`Summary::CSV_HEADER`] (the first 12 fields).
    pub fn csv_row(&self) -> String {
        let f = self.fields();
        f[..12]
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses a row written by [`Summary::csv_row`].
    pub fn from_csv_row(row: &str) -> Option<Summary> {
        let f: Vec<&str> = row.trim().split(',').collect();
        let n = |i: usize| f.get(i)?.parse::<f64>().ok();
        Some(Summary {
            offered_rate: n(0)?,
            achieved_rate: n(1)?,
            errors: n(2)? as u64,
            timeouts: n(3)? as u64,
            p50_us: n(4)?,
            p90_us: n(5)?,
            p99_us: n(6)?,
            p999_us: n(7)?,
            p9999_us: n(8)?,
            max_us: n(9)?,
            late_p99_us: 0.0,
            generator_late: f.get(10)? == &"true",
            generator_cpu: n(11).unwrap_or(0.0),
        })
    }

    /// The human-readable table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<16} {:>12}",
            "offered rate",
            if self.offered_rate > 0.0 {
                format!("{:.0}/s", self.offered_rate)
            } else {
                "closed loop".into()
            }
        );
        let _ = writeln!(s, "{:<16} {:>12.0}/s", "achieved rate", self.achieved_rate);
        let _ = writeln!(s, "{:<16} {:>12}", "errors", self.errors);
        let _ = writeln!(s, "{:<16} {:>12}", "timeouts", self.timeouts);
        for (name, v) in [
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p999_us),
            ("p99.99", self.p9999_us),
            ("max", self.max_us),
        ] {
            let _ = writeln!(s, "{name:<16} {v:>12.1} us");
        }
        let _ = writeln!(
            s,
            "{:<16} {:>12.1} us p99 send lateness{}",
            "generator",
            self.late_p99_us,
            if self.generator_late {
                "  ** GENERATOR FELL BEHIND: numbers include its own delay **"
            } else {
                ""
            }
        );
        let _ = write!(
            s,
            "{:<16} {:>12.0} % of one core",
            "generator cpu",
            self.generator_cpu * 100.0
        );
        s
    }
}

/// One curve: a label and its points.
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// One point per swept rate.
    pub points: Vec<Summary>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Draws p99 (solid) and p99.9 (dashed) latency against achieved throughput
/// for each series, with a logarithmic latency axis.
pub fn svg_plot(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 540.0, 80.0, 220.0, 40.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let xmax = pts.clone().map(|p| p.achieved_rate).fold(1.0, f64::max) * 1.05;
    let ys = pts.flat_map(|p| [p.p99_us, p.p999_us]).filter(|v| *v > 0.0);
    let ymin = ys.clone().fold(1e9, f64::min).clamp(0.1, 1e9);
    let ymax = ys.fold(1.0, f64::max);
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
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        (w - right + left) / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    let _ = writeln!(
        s,
        r#"<g stroke="black"><line x1="{left}" y1="{}" x2="{}" y2="{}"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}"/></g>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let mut e = lmin;
    while e <= lmax {
        let v = 10f64.powf(e);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            w - right,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0,
            fmt_num(v)
        );
        e += 1.0;
    }
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(v),
            h - bottom + 18.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">achieved throughput (requests/s)</text>"#,
        (w - right + left) / 2.0,
        h - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (µs, log scale)</text>"#,
        (h - bottom + top) / 2.0
    );
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = ser.points.clone();
        sorted.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
        for (field, dash) in [(0, ""), (1, r#" stroke-dasharray="6 4""#)] {
            let path: Vec<String> = sorted
                .iter()
                .map(|p| {
                    format!(
                        "{:.1},{:.1}",
                        x(p.achieved_rate),
                        y(if field == 0 { p.p99_us } else { p.p999_us })
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            w - right + 36.0,
            w - right + 42.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    let ly = top + 30.0 + series.len() as f64 * 20.0;
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{ly}" fill="#555">solid: p99, dashed: p99.9</text>"##,
        w - right + 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
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

    fn sample(rate: f64, p99: f64) -> Summary {
        Summary {
            offered_rate: rate,
            achieved_rate: rate,
            errors: 0,
            timeouts: 0,
            p50_us: 10.0,
            p90_us: 20.0,
            p99_us: p99,
            p999_us: p99 * 2.0,
            p9999_us: p99 * 3.0,
            max_us: p99 * 4.0,
            late_p99_us: 0.0,
            generator_late: false,
            generator_cpu: 0.5,
        }
    }

    #[test]
    fn csv_round_trips_and_svg_draws_every_series() {
        let s = sample(1000.0, 50.0);
        let header: Vec<&str> = Summary::CSV_HEADER.split(',').collect();
        let names: Vec<&str> = s.fields()[..12].iter().map(|(k, _)| *k).collect();
        assert_eq!(header, names, "the CSV header names the CSV fields");
        assert_eq!(Summary::from_csv_row(&s.csv_row()).unwrap().p99_us, 50.0);
        let svg = svg_plot(
            "t <1>",
            &[
                Series {
                    label: "lb".into(),
                    points: vec![sample(1000.0, 50.0), sample(2000.0, 80.0)],
                },
                Series {
                    label: "inline".into(),
                    points: vec![sample(1000.0, 500.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 4);
        // Each decade tick sits at its own height (they once collapsed onto
        // the smallest data point).
        let ticks: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("stroke=\"#ddd\""))
            .map(|l| l.split("y1=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        let distinct: std::collections::HashSet<&&str> = ticks.iter().collect();
        assert!(
            ticks.len() >= 2 && distinct.len() == ticks.len(),
            "{ticks:?}"
        );
        assert!(svg.contains("t &lt;1&gt;") && svg.ends_with("</svg>\n"));
    }
}
