//! `ramkv-bench`: an open-loop load generator that measures tail latency
//! from intended send times, against ramkv, memcached or Redis.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ramkv_bench::dist::{KeyDist, ServiceDist, SizeDist, parse_duration};
use ramkv_bench::engine::{self, Mode, RunConfig, Workload};
use ramkv_bench::pacer::Pacing;
use ramkv_bench::placement::Place;
use ramkv_bench::protocol::Target;
use ramkv_bench::report::{self, PlotPoint, Point, Series, Summary, svg_plot};
use ramkv_client::cli::ConnectArgs;

/// Load generator for ramkv, memcached and Redis. Measures latency from each
/// request's scheduled send time, so a stall cannot hide (no coordinated
/// omission), and checks that it kept its own schedule.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// ramkv://HOST:PORT, memcache://HOST:PORT, redis://HOST:PORT, or
    /// echo://HOST:PORT (a raw TCP ping-pong baseline; see --echo-server).
    #[arg(long, default_value = "ramkv://127.0.0.1:7878")]
    target: String,
    /// A named workload: etc, ycsb-a, ycsb-b, ycsb-c, uniform, hot-conns,
    /// bimodal, bimodal-50, large. Explicit flags override its settings.
    #[arg(long)]
    preset: Option<String>,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop instead: this many requests outstanding per connection.
    #[arg(long, conflicts_with_all = ["rate", "sweep", "slo"])]
    concurrency: Option<usize>,
    /// Connections (default 4, or the preset's).
    #[arg(long)]
    connections: Option<usize>,
    /// Generator threads (connections are spread over them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measured time per run, after the warmup.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Sent but not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Run each point this many times and report medians with 95%
    /// confidence intervals (below 6 runs the interval is [min, max], and its
    /// real confidence level is printed with it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Store every key once before measuring, so GETs hit.
    #[arg(long)]
    preload: bool,
    /// Keys in the key space (default 100,000).
    #[arg(long)]
    keys: Option<u64>,
    /// uniform, or zipf:THETA (YCSB's scrambled Zipfian, e.g. zipf:0.99).
    #[arg(long)]
    key_dist: Option<String>,
    /// Fraction of requests that are GETs; the rest are SETs.
    #[arg(long)]
    get_ratio: Option<f64>,
    /// Bytes per key (default 16).
    #[arg(long)]
    key_size: Option<usize>,
    /// N, uniform:A:B, gpareto:SIGMA:XI:MAX, or mix:P:A:B (bytes).
    #[arg(long)]
    value_size: Option<String>,
    /// K:F: K connections carry a fraction F of all requests.
    #[arg(long)]
    hot_conns: Option<String>,
    /// Every request becomes ramkv's SPIN op with this service time:
    /// fixed:D, exp:MEAN or bimodal:P:A:B (e.g. bimodal:0.995:500ns:500us).
    /// The server needs --enable-spin-op.
    #[arg(long)]
    service: Option<String>,
    /// With --service: spin (CPU-bound, the default) or sleep (the server
    /// thread sleeps, as a handler blocked on I/O would: emulates many cores).
    #[arg(long, value_enum, default_value = "spin")]
    service_mode: ServiceMode,
    /// How the open loop waits for each send: sleep (a precise timer, then
    /// a short spin; cheap, for shared cores), sleep:SPIN to change the spin
    /// window (default 20us), or spin (never sleep; for a dedicated core).
    #[arg(long, default_value = "sleep", value_parser = Pacing::parse)]
    pacing: Pacing,
    /// A request sent within this long of its scheduled time counts as on
    /// time. Runs with under 99.9% on time are flagged late, under 95% invalid.
    #[arg(long, default_value = "50us", value_parser = parse_duration)]
    on_time: Duration,
    /// Exit with an error when any run is invalid (under 95% on time).
    #[arg(long)]
    strict: bool,
    /// Print one JSON object per point instead of the table.
    #[arg(long)]
    json: bool,
    /// Run these rates in turn (R1,R2,…); writes OUT.csv and OUT.svg.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Find the highest rate meeting an SLO such as p99:200us.
    #[arg(long)]
    slo: Option<String>,
    /// Output prefix for --sweep files.
    #[arg(long, default_value = "bench/out/sweep")]
    out: String,
    /// Title of the plot (default: the workload and the target).
    #[arg(long)]
    title: Option<String>,
    /// Draw an SVG from sweep CSVs instead of measuring: --plot OUT.svg --series LABEL=FILE.csv …
    #[arg(long, requires = "series")]
    plot: Option<String>,
    /// A curve for --plot, as LABEL=FILE.csv.
    #[arg(long)]
    series: Vec<String>,
    /// Serve the echo:// baseline protocol on this address instead of measuring.
    #[arg(long)]
    echo_server: Option<String>,
    /// Wait this long for outstanding replies after a run; the rest are timeouts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The ramkv server's admin endpoint (its --admin HOST:PORT): each run
    /// records which dispatcher serves each connection, in the JSON output
    /// and in a sweep's OUT-runs.csv.
    #[arg(long)]
    admin: Option<String>,
    /// How the connections are spread over the server's dispatchers:
    /// as-accepted (wherever the server puts them), or even (every
    /// dispatcher as many as the others, ±1, hot connections apart: the
    /// generator reopens a connection until it lands where that needs;
    /// needs --admin).
    #[arg(long, value_enum, default_value_t = Place::AsAccepted)]
    place: Place,
    #[command(flatten)]
    connect: ConnectArgs,
    /// No progress line every second.
    #[arg(long)]
    quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ServiceMode {
    /// The server busy-waits: CPU-bound service.
    Spin,
    /// The server's thread sleeps: service bounded by threads, not cores.
    Sleep,
}

/// The settings a preset supplies; any flag given explicitly wins.
#[derive(Default)]
struct Preset {
    keys: Option<u64>,
    key_dist: Option<&'static str>,
    get_ratio: Option<f64>,
    key_size: Option<usize>,
    value_size: Option<&'static str>,
    hot_conns: Option<&'static str>,
    service: Option<&'static str>,
    connections: Option<usize>,
}

fn preset(name: &str) -> anyhow::Result<Preset> {
    let zipf = Some("zipf:0.99");
    Ok(match name {
        // Facebook ETC (Atikoglu et al., SIGMETRICS 2012): 30:1 GET:SET;
        // values Generalized Pareto(σ=214.476, ξ=0.348238), capped at 8 KiB.
        "etc" => Preset {
            get_ratio: Some(30.0 / 31.0),
            key_dist: zipf,
            key_size: Some(32),
            value_size: Some("gpareto:214.476:0.348238:8192"),
            ..Default::default()
        },
        "ycsb-a" | "ycsb-b" | "ycsb-c" => Preset {
            get_ratio: Some(match name {
                "ycsb-a" => 0.5,
                "ycsb-b" => 0.95,
                _ => 1.0,
            }),
            key_dist: zipf,
            key_size: Some(24),
            value_size: Some("1000"),
            ..Default::default()
        },
        "uniform" => Preset {
            get_ratio: Some(0.9),
            key_dist: Some("uniform"),
            value_size: Some("100"),
            ..Default::default()
        },
        "hot-conns" => Preset {
            get_ratio: Some(0.95),
            key_dist: zipf,
            value_size: Some("100"),
            hot_conns: Some("2:0.8"),
            connections: Some(16),
            ..Default::default()
        },
        "bimodal" => Preset {
            service: Some("bimodal:0.995:500ns:500us"),
            connections: Some(16),
            ..Default::default()
        },
        "bimodal-50" => Preset {
            service: Some("bimodal:0.5:1us:100us"),
            connections: Some(16),
            ..Default::default()
        },
        "large" => Preset {
            get_ratio: Some(0.9),
            key_dist: zipf,
            value_size: Some("mix:0.95:100:65536"),
            ..Default::default()
        },
        other => bail!(
            "unknown preset '{other}': etc, ycsb-a, ycsb-b, ycsb-c, uniform, hot-conns, bimodal, bimodal-50, large"
        ),
    })
}

fn build(args: &Args) -> anyhow::Result<(RunConfig, Workload)> {
    let p = match &args.preset {
        Some(name) => preset(name)?,
        None => Preset::default(),
    };
    let target = Target::parse(&args.target).map_err(anyhow::Error::msg)?;
    let keys = args.keys.or(p.keys).unwrap_or(100_000);
    let key_dist = args
        .key_dist
        .clone()
        .or(p.key_dist.map(String::from))
        .unwrap_or_else(|| "uniform".into());
    let hot_conns = match args.hot_conns.as_deref().or(p.hot_conns) {
        None => None,
        Some(s) => {
            let (k, f) = s
                .split_once(':')
                .with_context(|| format!("--hot-conns '{s}': use K:F, e.g. 2:0.8"))?;
            Some((
                k.parse().context("--hot-conns K")?,
                f.parse().context("--hot-conns F")?,
            ))
        }
    };
    let service = args
        .service
        .as_deref()
        .or(p.service)
        .map(ServiceDist::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if args.service_mode == ServiceMode::Sleep && service.is_none() {
        bail!("--service-mode sleep needs --service (or a preset with one)");
    }
    let wl = Workload {
        keys,
        key_dist: KeyDist::parse(&key_dist, keys).map_err(anyhow::Error::msg)?,
        key_size: args.key_size.or(p.key_size).unwrap_or(16),
        get_ratio: args.get_ratio.or(p.get_ratio).unwrap_or(0.9),
        value_size: SizeDist::parse(args.value_size.as_deref().or(p.value_size).unwrap_or("100"))
            .map_err(anyhow::Error::msg)?,
        hot_conns,
        service,
        service_sleeps: args.service_mode == ServiceMode::Sleep,
    };
    let mode = match (args.concurrency, args.rate) {
        (Some(c), _) => Mode::Closed { concurrency: c },
        (None, r) => Mode::Open {
            rate: r.unwrap_or(10_000.0),
        },
    };
    let cfg = RunConfig {
        target,
        connections: args.connections.or(p.connections).unwrap_or(4),
        threads: args.threads,
        mode,
        duration: args.duration,
        warmup: args.warmup,
        drain: args.drain,
        pacing: args.pacing,
        on_time: args.on_time,
        progress: !args.quiet
            && !args.json
            && args.sweep.is_empty()
            && args.slo.is_none()
            && args.repeat == 1,
        seed: args.seed,
        auth_token: args
            .connect
            .auth_token_file
            .as_deref()
            .map(ramkv_client::read_token)
            .transpose()?,
        tls: args
            .connect
            .tls_ca
            .as_deref()
            .map(ramkv_client::tls::connector)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        connect_timeout: args.connect.connect_timeout,
        admin: args.admin.clone(),
        place: args.place,
    };
    engine::check(&cfg, &wl).map_err(anyhow::Error::msg)?;
    Ok((cfg, wl))
}

/// Runs one point `repeat` times.
fn measure(cfg: &RunConfig, wl: &Workload, repeat: u32) -> anyhow::Result<Point> {
    let mut runs = Vec::new();
    for i in 0..repeat {
        let mut c = cfg.clone();
        // A different schedule each time, so the repeats sample the noise.
        c.seed = cfg.seed.wrapping_add(u64::from(i));
        let r = engine::run(&c, wl).map_err(anyhow::Error::msg)?;
        runs.push(Summary::of(&r, cfg.on_time));
    }
    Point::of(&runs).context("no run")
}

fn write_file(path: &str, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {path}"))
}

fn plot(args: &Args, out: &str) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for s in &args.series {
        let (label, file) = s
            .split_once('=')
            .with_context(|| format!("--series '{s}': use LABEL=FILE.csv"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        let points = PlotPoint::from_csv(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("cannot plot {file}"))?;
        series.push(Series {
            label: label.to_string(),
            points,
        });
    }
    let title = args
        .title
        .as_deref()
        .unwrap_or("p99 / p99.9 latency vs throughput");
    write_file(out, &svg_plot(title, &series))?;
    eprintln!("wrote {out}");
    Ok(())
}

/// What the run measured, for a plot's title: the preset (or the workload
/// flags) and the target.
fn describe(args: &Args, wl: &Workload) -> String {
    let what = match (&args.preset, &wl.service) {
        (Some(p), _) => p.clone(),
        (None, Some(_)) => format!("--service {}", args.service.as_deref().unwrap_or("")),
        (None, None) => format!("{:.0}% GET", wl.get_ratio * 100.0),
    };
    let mode = if wl.service_sleeps {
        ", sleep-mode service"
    } else {
        ""
    };
    format!("{what}{mode} → {}", args.target)
}

/// Parses `p99:200us` into (quantile name, bound in µs).
fn parse_slo(s: &str) -> anyhow::Result<(String, f64)> {
    let (q, d) = s
        .split_once(':')
        .with_context(|| format!("--slo '{s}': use e.g. p99:200us"))?;
    if !["p50", "p90", "p99", "p99.9", "p999"].contains(&q) {
        bail!("--slo quantile '{q}': use p50, p90, p99 or p99.9");
    }
    let bound = parse_duration(d).map_err(anyhow::Error::msg)?.as_secs_f64() * 1e6;
    Ok((q.to_string(), bound))
}

fn quantile(s: &Summary, q: &str) -> Option<f64> {
    match q {
        "p50" => s.p50_us,
        "p90" => s.p90_us,
        "p99" => s.p99_us,
        _ => s.p999_us,
    }
}

fn meets(p: &Point, q: &str, bound_us: f64) -> bool {
    let s = &p.summary;
    quantile(s, q).is_some_and(|v| v <= bound_us)
        && s.valid
        && s.errors == 0
        && s.timeouts == 0
        && s.achieved_rate >= 0.95 * s.offered_rate
}

fn report(args: &Args, p: &Point) {
    if args.json {
        println!("{}", p.json());
    } else if args.sweep.is_empty() && args.slo.is_none() {
        println!("{}", p.table());
    } else {
        eprintln!("{}", p.line());
    }
    for w in p.warnings() {
        eprintln!("{w}");
    }
}

/// The exit status for measured points: failure when every request of a
/// point failed, or, with --strict, when any point is invalid.
fn verdict(args: &Args, points: &[Point]) -> ExitCode {
    if points.iter().any(|p| p.summary.all_failed()) {
        eprintln!("ramkv-bench: no request succeeded in at least one run; see the errors above");
        return ExitCode::FAILURE;
    }
    if args.strict && points.iter().any(|p| !p.summary.valid) {
        eprintln!("ramkv-bench: an invalid run (under 95% of requests on time) and --strict");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn sweep(args: &Args, cfg: &mut RunConfig, wl: &Workload) -> anyhow::Result<ExitCode> {
    let mut points = Vec::new();
    for &rate in &args.sweep {
        cfg.mode = Mode::Open { rate };
        points.push(measure(cfg, wl, args.repeat)?);
    }
    report::flag_noise(&mut points);
    for p in &points {
        report(args, p);
    }
    if points.iter().all(|p| p.summary.all_failed()) {
        bail!("every request failed at every rate; no files written");
    }
    let mut csv = vec![report::CSV_HEADER.to_string()];
    csv.extend(points.iter().map(report::csv_row));
    let (csv_path, svg_path) = (format!("{}.csv", args.out), format!("{}.svg", args.out));
    write_file(&csv_path, &(csv.join("\n") + "\n"))?;
    let mut runs = vec![report::RUNS_CSV_HEADER.to_string()];
    runs.extend(points.iter().flat_map(report::runs_csv_rows));
    let runs_path = format!("{}-runs.csv", args.out);
    write_file(&runs_path, &(runs.join("\n") + "\n"))?;
    let title = args.title.clone().unwrap_or_else(|| describe(args, wl));
    let series = Series {
        label: args.target.clone(),
        points: points.iter().map(PlotPoint::of).collect(),
    };
    write_file(&svg_path, &svg_plot(&title, &[series]))?;
    eprintln!("wrote {csv_path}, {runs_path} and {svg_path}");
    Ok(verdict(args, &points))
}

fn slo_search(
    args: &Args,
    cfg: &mut RunConfig,
    wl: &Workload,
    slo: &str,
) -> anyhow::Result<ExitCode> {
    let (q, bound) = parse_slo(slo)?;
    let mut probe = |rate: f64| -> anyhow::Result<Point> {
        cfg.mode = Mode::Open { rate };
        let p = measure(cfg, wl, args.repeat)?;
        eprintln!(
            "probe {rate:>9.0}/s: {q} {} us, achieved {:.0}/s -> {}",
            quantile(&p.summary, &q).map_or("-".into(), |v| format!("{v:.1}")),
            p.summary.achieved_rate,
            if meets(&p, &q, bound) {
                "meets"
            } else {
                "misses"
            }
        );
        Ok(p)
    };
    let mut lo_rate = args.rate.unwrap_or(1_000.0);
    let mut best = probe(lo_rate)?;
    if !meets(&best, &q, bound) {
        for w in best.warnings() {
            eprintln!("{w}");
        }
        bail!("even {lo_rate}/s misses {slo}; start lower with --rate");
    }
    let mut hi_rate = lo_rate * 2.0;
    loop {
        let p = probe(hi_rate)?;
        if !meets(&p, &q, bound) {
            break;
        }
        (lo_rate, best) = (hi_rate, p);
        hi_rate *= 2.0;
        if hi_rate > 1e8 {
            bail!("no SLO violation below 100M req/s: the SLO is too loose to measure");
        }
    }
    for _ in 0..5 {
        let mid = (lo_rate + hi_rate) / 2.0;
        let p = probe(mid)?;
        if meets(&p, &q, bound) {
            (lo_rate, best) = (mid, p);
        } else {
            hi_rate = mid;
        }
    }
    if args.json {
        println!("{}", best.json());
    } else {
        println!(
            "highest rate meeting {slo}: {lo_rate:.0} req/s\n{}",
            best.table()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ramkv-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.echo_server {
        ramkv_bench::protocol::echo_server(addr)
            .with_context(|| format!("echo server on {addr}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(out) = &args.plot {
        plot(&args, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (mut cfg, wl) = build(&args)?;
    if args.preload {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(engine::preload(&cfg, &wl))
            .map_err(anyhow::Error::msg)?;
        if !args.json {
            eprintln!("preloaded {} keys", wl.keys);
        }
    }
    if !args.sweep.is_empty() {
        return sweep(&args, &mut cfg, &wl);
    }
    if let Some(slo) = &args.slo {
        return slo_search(&args, &mut cfg, &wl, slo);
    }
    let p = measure(&cfg, &wl, args.repeat)?;
    report(&args, &p);
    Ok(verdict(&args, std::slice::from_ref(&p)))
}
