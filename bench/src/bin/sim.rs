//! `ramkv-sim`: simulates ramkv's architectures under an open-loop load and
//! writes the same CSV and SVG as a ramkv-bench sweep, so simulated and
//! measured curves can share a plot. See `ramkv_bench::sim` for the model.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ramkv_bench::dist::{ServiceDist, parse_duration};
use ramkv_bench::report::{self, PlotPoint, Point, Series};
use ramkv_bench::sim::{self, Arch, Costs, Run, Service};

/// Simulates ramkv's architectures (one `--arch` each) at the offered rates
/// of `--sweep`, and writes OUT-LABEL.csv per architecture and OUT.svg.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// An architecture: single, inline:N[:rr|hash], tpc, lb:D:W[:rr|hash];
    /// as LABEL=ARCH to name its curve. Repeat for several.
    #[arg(long = "arch", required = true)]
    archs: Vec<String>,
    /// Offered rates, requests per second (R1,R2,…).
    #[arg(long, value_delimiter = ',', required = true)]
    sweep: Vec<f64>,
    /// Connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// K:F: K connections carry a fraction F of the requests.
    #[arg(long)]
    hot_conns: Option<String>,
    /// Service times: fixed:D, exp:MEAN or bimodal:P:A:B.
    #[arg(long, conflicts_with = "service_file")]
    service: Option<String>,
    /// Service times to draw from, one per line (850us, or ns).
    #[arg(long)]
    service_file: Option<std::path::PathBuf>,
    /// Step costs from a file of dispatch_us=, handoff_us=, wake_us=,
    /// overshoot_us= lines; the flags below override it.
    #[arg(long)]
    calibration: Option<std::path::PathBuf>,
    /// Dispatcher time per request (read, decode, write), µs.
    #[arg(long)]
    dispatch_us: Option<f64>,
    /// lb's extra dispatcher time per request to queue it, µs.
    #[arg(long)]
    handoff_us: Option<f64>,
    /// How late an idle thread starts on new work, µs.
    #[arg(long)]
    wake_us: Option<f64>,
    /// Added to every service time (a sleep's overshoot), µs.
    #[arg(long)]
    overshoot_us: Option<f64>,
    /// lb's quick path: requests of at most this service time run on their
    /// dispatcher while the queue is empty, as ramkv runs GETs (0: off).
    #[arg(long, default_value = "0ns", value_parser = parse_duration)]
    quick: Duration,
    /// Service needs a core: thread-per-connection threads share --cores.
    #[arg(long)]
    cpu_bound: bool,
    /// Cores that thread-per-connection threads share with --cpu-bound.
    #[arg(long, default_value_t = 8)]
    cores: usize,
    /// Sent but not measured.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    /// How long answers are awaited after the window; the rest are timeouts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain: Duration,
    /// Runs per point (different seeds); medians with intervals, as ramkv-bench --repeat.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Requests an inline dispatcher runs for one connection before it
    /// turns to its next connection with work, as tokio's cooperative budget
    /// makes ramkv's do (0: one queue, first come, first served).
    #[arg(long, default_value_t = sim::RAMKV_TURN)]
    turn: usize,
    /// Whether a turn also ends once the connection has run what was waiting
    /// when it began (one read's batch), as ramkv's does: tokio takes a short
    /// read as a drained socket, and the task's next read yields.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    read_turns: bool,
    /// Each connection's dispatcher ("0 3 1 …", as ramkv-bench's
    /// OUT-runs.csv records it) instead of the architecture's assignment.
    #[arg(long, value_parser = parse_placement)]
    placement: Option<Placement>,
    /// Seed of the first run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output prefix.
    #[arg(long, default_value = "bench/out/sim")]
    out: String,
    /// Plot title.
    #[arg(long, default_value = "simulated")]
    title: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = match (&args.service, &args.service_file) {
        (Some(s), None) => Service::Dist(ServiceDist::parse(s).map_err(anyhow::Error::msg)?),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            Service::from_file_text(&text).map_err(anyhow::Error::msg)?
        }
        _ => bail!("give --service or --service-file"),
    };
    let costs = costs(&args)?;
    let hot = match &args.hot_conns {
        Some(h) => {
            let (k, f) = h.split_once(':').context("--hot-conns is K:F")?;
            Some((
                k.parse().context("--hot-conns K")?,
                f.parse().context("--hot-conns F")?,
            ))
        }
        None => None,
    };
    let mut series = Vec::new();
    for spec in &args.archs {
        let (label, arch) = spec.split_once('=').unwrap_or((spec, spec));
        let arch = Arch::parse(arch).map_err(anyhow::Error::msg)?;
        if let Some(p) = &args.placement {
            check_placement(&p.0, arch, args.connections as usize)?;
        }
        let mut csv = format!("{}\n", report::CSV_HEADER);
        let mut points = Vec::new();
        for &rate in &args.sweep {
            let runs: Vec<_> = (0..args.repeat as u64)
                .map(|i| {
                    let run = Run {
                        arch,
                        rate,
                        connections: args.connections as usize,
                        hot,
                        service: service.clone(),
                        costs,
                        cores: args.cores,
                        cpu_bound: args.cpu_bound,
                        warmup: args.warmup.as_secs_f64(),
                        duration: args.duration.as_secs_f64(),
                        drain: args.drain.as_secs_f64(),
                        seed: args.seed + i,
                        quick: args.quick.as_nanos() as f64,
                        placement: args.placement.as_ref().map(|p| p.0.clone()),
                        turn: args.turn,
                        read_turns: args.read_turns,
                    };
                    sim::summary(&run, &sim::simulate(&run))
                })
                .collect();
            let point = Point::of(&runs).context("no runs")?;
            println!("{label}: {}", point.line());
            csv.push_str(&report::csv_row(&point));
            csv.push('\n');
            points.push(PlotPoint::of(&point));
        }
        write(&format!("{}-{label}.csv", args.out), &csv)?;
        series.push(Series {
            label: label.to_string(),
            points,
        });
    }
    write(
        &format!("{}.svg", args.out),
        &report::svg_plot(&args.title, &series),
    )?;
    Ok(())
}

fn costs(args: &Args) -> anyhow::Result<Costs> {
    let mut c = match &args.calibration {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            Costs::from_calibration(&text).map_err(anyhow::Error::msg)?
        }
        None => Costs::default(),
    };
    for (flag, slot) in [
        (args.dispatch_us, &mut c.dispatch),
        (args.handoff_us, &mut c.handoff),
        (args.wake_us, &mut c.wake),
        (args.overshoot_us, &mut c.overshoot),
    ] {
        if let Some(us) = flag {
            *slot = us * 1e3;
        }
    }
    Ok(c)
}

/// A recorded placement: dispatcher indices by connection.
#[derive(Clone, Debug)]
struct Placement(Vec<usize>);

fn parse_placement(s: &str) -> Result<Placement, String> {
    s.split([' ', ','])
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.parse().map_err(|_| {
                format!("'{f}' is not a dispatcher index (a '-' means the run recorded none)")
            })
        })
        .collect::<Result<_, _>>()
        .map(Placement)
}

/// A placement fits the architecture: one dispatcher per connection, each
/// one the architecture has.
fn check_placement(p: &[usize], arch: Arch, connections: usize) -> anyhow::Result<()> {
    let dispatchers = match arch {
        Arch::Inline { n, .. } => n,
        Arch::Lb { d, .. } => d,
        Arch::ThreadPerConn => bail!("--placement: thread-per-connection has no dispatchers"),
    };
    if p.len() != connections {
        bail!(
            "--placement names {} connections, --connections is {connections}",
            p.len()
        );
    }
    if let Some(d) = p.iter().find(|&&d| d >= dispatchers) {
        bail!("--placement: dispatcher {d}, but the architecture has {dispatchers}");
    }
    Ok(())
}

fn write(path: &str, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))
}
