//! `ramkv-bench`: an open-loop load generator that measures tail latency
//! from intended send times, against ramkv, memcached or Redis.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ramkv_bench::dist::{KeyDist, ServiceDist, SizeDist, parse_duration};
use ramkv_bench::engine::{self, Mode, RunConfig, Workload};
use ramkv_bench::protocol::Target;
use ramkv_bench::report::{Series, Summary, svg_plot};

/// Load generator for ramkv, memcached and Redis. Measures latency from each
/// request's scheduled send time, so a stall cannot hide (no coordinated omission).
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
    /// Store every key once before measuring, so GETs hit.
    #[arg(long)]
    preload: bool,
    #[arg(long)]
    keys: Option<u64>,
    /// uniform, or zipf:THETA (YCSB's scrambled Zipfian, e.g. zipf:0.99).
    #[arg(long)]
    key_dist: Option<String>,
    /// Fraction of requests that are GETs; the rest are SETs.
    #[arg(long)]
    get_ratio: Option<f64>,
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
    #[arg(long)]
    service: Option<String>,
    /// Print one JSON object per run instead of the table.
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
    /// Title of the plot.
    #[arg(long)]
    title: Option<String>,
    /// Draw an SVG from sweep CSVs instead of measuring: --plot OUT.svg --series LABEL=FILE.csv …
    #[arg(long, requires = "series")]
    plot: Option<String>,
    #[arg(long)]
    series: Vec<String>,
    /// Serve the echo:// baseline protocol on this address instead of measuring.
    #[arg(long)]
    echo_server: Option<String>,
    /// Wait this long for outstanding replies after a run; the rest are timeouts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Flag the run when the p99 send lateness exceeds this.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    late_threshold: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Authenticate every ramkv connection with the token in this file.
    #[arg(long)]
    auth_token_file: Option<std::path::PathBuf>,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// No progress line every second.
    #[arg(long)]
    quiet: bool,
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
        "ycsb-a" => Preset {
            get_ratio: Some(0.5),
            key_dist: zipf,
            key_size: Some(24),
            value_size: Some("1000"),
            ..Default::default()
        },
        "ycsb-b" => Preset {
            get_ratio: Some(0.95),
            key_dist: zipf,
            key_size: Some(24),
            value_size: Some("1000"),
            ..Default::default()
        },
        "ycsb-c" => Preset {
            get_ratio: Some(1.0),
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
    let wl = Workload {
        keys,
        key_dist: KeyDist::parse(&key_dist, keys).map_err(anyhow::Error::msg)?,
        key_size: args.key_size.or(p.key_size).unwrap_or(16),
        get_ratio: args.get_ratio.or(p.get_ratio).unwrap_or(0.9),
        value_size: SizeDist::parse(args.value_size.as_deref().or(p.value_size).unwrap_or("100"))
            .map_err(anyhow::Error::msg)?,
        hot_conns,
        service: args
            .service
            .as_deref()
            .or(p.service)
            .map(ServiceDist::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
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
        late_threshold: args.late_threshold,
        progress: !args.quiet && !args.json && args.sweep.is_empty() && args.slo.is_none(),
        seed: args.seed,
        auth_token: args
            .auth_token_file
            .as_deref()
            .map(ramkv_client::read_token)
            .transpose()?,
        tls: args
            .tls_ca
            .as_deref()
            .map(ramkv_client::tls::connector)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    };
    engine::check(&cfg, &wl).map_err(anyhow::Error::msg)?;
    Ok((cfg, wl))
}

fn measure(cfg: &RunConfig, wl: &Workload) -> anyhow::Result<Summary> {
    let r = engine::run(cfg, wl).map_err(anyhow::Error::msg)?;
    Ok(Summary::from(&r))
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
        let points = text
            .lines()
            .skip(1)
            .filter_map(Summary::from_csv_row)
            .collect();
        series.push(Series {
            label: label.to_string(),
            points,
        });
    }
    write_file(
        out,
        &svg_plot(
            args.title
                .as_deref()
                .unwrap_or("p99 / p99.9 latency vs throughput"),
            &series,
        ),
    )?;
    eprintln!("wrote {out}");
    Ok(())
}

/// Parses `p99:200us` into (quantile field picker, bound in µs).
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

fn meets(s: &Summary, q: &str, bound_us: f64) -> bool {
    let v = match q {
        "p50" => s.p50_us,
        "p90" => s.p90_us,
        "p99" => s.p99_us,
        _ => s.p999_us,
    };
    v <= bound_us && s.errors == 0 && s.timeouts == 0 && s.achieved_rate >= 0.95 * s.offered_rate
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = &args.echo_server {
        return ramkv_bench::protocol::echo_server(addr)
            .with_context(|| format!("echo server on {addr}"));
    }
    if let Some(out) = &args.plot {
        return plot(&args, out);
    }
    let (mut cfg, wl) = build(&args)?;
    if args.preload {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(engine::preload(
            &cfg.target,
            &wl,
            cfg.connections,
            cfg.auth_token.as_deref(),
            cfg.tls.as_ref(),
        ))
        .map_err(anyhow::Error::msg)?;
        if !args.json {
            eprintln!("preloaded {} keys", wl.keys);
        }
    }
    if !args.sweep.is_empty() {
        let mut rows = vec![Summary::CSV_HEADER.to_string()];
        let mut points = Vec::new();
        for &rate in &args.sweep {
            cfg.mode = Mode::Open { rate };
            let s = measure(&cfg, &wl)?;
            if args.json {
                println!("{}", s.json());
            } else {
                eprintln!(
                    "rate {:>9.0}: achieved {:>9.0}/s  p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>9.1} us  errors {} timeouts {}{}",
                    rate,
                    s.achieved_rate,
                    s.p50_us,
                    s.p99_us,
                    s.p999_us,
                    s.max_us,
                    s.errors,
                    s.timeouts,
                    if s.generator_late {
                        "  GENERATOR LATE"
                    } else {
                        ""
                    }
                );
            }
            rows.push(s.csv_row());
            points.push(s);
        }
        let (csv, svg) = (format!("{}.csv", args.out), format!("{}.svg", args.out));
        write_file(&csv, &(rows.join("\n") + "\n"))?;
        let title = args.title.clone().unwrap_or_else(|| args.target.clone());
        write_file(
            &svg,
            &svg_plot(
                &title,
                &[Series {
                    label: args.target.clone(),
                    points,
                }],
            ),
        )?;
        eprintln!("wrote {csv} and {svg}");
        return Ok(());
    }
    if let Some(slo) = &args.slo {
        let (q, bound) = parse_slo(slo)?;
        let probe = |rate: f64, cfg: &mut RunConfig| -> anyhow::Result<Summary> {
            cfg.mode = Mode::Open { rate };
            let s = measure(cfg, &wl)?;
            eprintln!(
                "probe {rate:>9.0}/s: {q} {:>8.1} us, achieved {:.0}/s -> {}",
                match q.as_str() {
                    "p50" => s.p50_us,
                    "p90" => s.p90_us,
                    "p99" => s.p99_us,
                    _ => s.p999_us,
                },
                s.achieved_rate,
                if meets(&s, &q, bound) {
                    "meets"
                } else {
                    "misses"
                }
            );
            Ok(s)
        };
        let mut lo_rate = args.rate.unwrap_or(1_000.0);
        let mut best = probe(lo_rate, &mut cfg)?;
        if !meets(&best, &q, bound) {
            bail!("even {lo_rate}/s misses {slo}; start lower with --rate");
        }
        let mut hi_rate = lo_rate * 2.0;
        loop {
            let s = probe(hi_rate, &mut cfg)?;
            if !meets(&s, &q, bound) {
                break;
            }
            (lo_rate, best) = (hi_rate, s);
            hi_rate *= 2.0;
            if hi_rate > 1e8 {
                bail!("no SLO violation below 100M req/s: the SLO is too loose to measure");
            }
        }
        for _ in 0..5 {
            let mid = (lo_rate + hi_rate) / 2.0;
            let s = probe(mid, &mut cfg)?;
            if meets(&s, &q, bound) {
                (lo_rate, best) = (mid, s);
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
        return Ok(());
    }
    let s = measure(&cfg, &wl)?;
    if args.json {
        println!("{}", s.json());
    } else {
        println!("{}", s.table());
    }
    if s.generator_late {
        eprintln!("warning: the generator fell behind its schedule; add --threads or lower --rate");
    }
    Ok(())
}
