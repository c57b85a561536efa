//! ramkv-bench measures what it claims: the offered rate, stalls that a
//! closed loop would hide, and the same workload against memcached and Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use prost::Message;
use ramkv_bench::dist::{KeyDist, SizeDist};
use ramkv_bench::engine::{self, Mode, RunConfig, RunResult, Workload};
use ramkv_bench::protocol::Target;
use ramkv_proto::{Request, Response, Status};

fn workload() -> Workload {
    Workload {
        keys: 1000,
        key_dist: KeyDist::Uniform,
        key_size: 16,
        get_ratio: 0.5,
        value_size: SizeDist::Fixed(32),
        hot_conns: None,
        service: None,
    }
}

fn config(target: &str, mode: Mode, duration: Duration) -> RunConfig {
    RunConfig {
        target: Target::parse(target).unwrap(),
        connections: 2,
        threads: 1,
        mode,
        duration,
        warmup: Duration::from_millis(200),
        drain: Duration::from_secs(5),
        late_threshold: Duration::from_millis(5),
        progress: false,
        seed: 9,
        auth_token: None,
        tls: None,
    }
}

fn run(cfg: &RunConfig) -> RunResult {
    engine::run(cfg, &workload()).expect("run completes")
}

#[test]
fn a_short_run_achieves_its_offered_rate() {
    let srv = ramkv::start(&ramkv::Config::for_tests()).unwrap();
    let cfg = config(
        &format!("ramkv://{}", srv.local_addr()),
        Mode::Open { rate: 2_000.0 },
        Duration::from_secs(2),
    );
    let r = run(&cfg);
    assert_eq!((r.errors, r.timeouts), (0, 0));
    // 4,000 Poisson arrivals: the count's standard deviation is 1.6%.
    let ratio = r.achieved_rate / 2_000.0;
    assert!(
        (0.9..1.1).contains(&ratio),
        "achieved {} of 2000/s",
        r.achieved_rate
    );
    srv.shutdown();
}

/// A ramkv-protocol fixture that answers every request at once, except that
/// it stalls for 200 ms once, at its first request 500 ms or more after its
/// first request (inside the measured window of these 200 ms + 1 s runs).
fn stalling_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let stalled = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let (first, stalled) = (first.clone(), stalled.clone());
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut header = [0u8; 4];
                while s.read_exact(&mut header).is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let id = Request::decode(&body[..]).map(|r| r.id).unwrap_or(0);
                    let since_first = first.get_or_init(Instant::now).elapsed();
                    if since_first >= Duration::from_millis(500)
                        && !stalled.swap(true, Ordering::SeqCst)
                    {
                        std::thread::sleep(Duration::from_millis(200)); // the stall under test
                    }
                    let resp = Response {
                        id,
                        status: Status::Ok as i32,
                        message: String::new(),
                        result: None,
                    };
                    let mut out = BytesMut::new();
                    out.put_u32(resp.encoded_len() as u32);
                    resp.encode(&mut out).unwrap();
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("ramkv://{addr}")
}

#[test]
fn open_loop_shows_a_stall_that_closed_loop_hides() {
    // Open loop, 1,000/s on one connection: the 200 ms stall delays every
    // request scheduled during it (~20% of this 1 s run), measured from
    // when each should have been sent.
    let mut cfg = config(
        &stalling_server(),
        Mode::Open { rate: 1_000.0 },
        Duration::from_secs(1),
    );
    cfg.connections = 1;
    let open = run(&cfg);
    let p99 = open.latency.value_at_quantile(0.99);
    assert!(
        p99 >= 100_000_000,
        "open-loop p99 {p99} ns hides the 200 ms stall"
    );
    assert!(open.latency.max() >= 190_000_000);

    // Closed loop, one request outstanding: only the one stalled request
    // sees the stall, and the percentiles look healthy.
    let mut cfg = config(
        &stalling_server(),
        Mode::Closed { concurrency: 1 },
        Duration::from_secs(1),
    );
    cfg.connections = 1;
    let closed = run(&cfg);
    assert!(closed.latency.max() >= 190_000_000, "the stall happened");
    let p99 = closed.latency.value_at_quantile(0.99);
    assert!(
        p99 < 20_000_000,
        "closed-loop p99 {p99} ns; it should hide the stall"
    );
}

#[test]
fn json_contract_and_sweep_files() {
    let srv = ramkv::start(&ramkv::Config::for_tests()).unwrap();
    let target = format!("ramkv://{}", srv.local_addr());
    let bin = env!("CARGO_BIN_EXE_ramkv-bench");
    let out = Command::new(bin)
        .args([
            "--target",
            &target,
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "100ms",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    for field in [
        "offered_rate",
        "achieved_rate",
        "errors",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "generator_late",
    ] {
        assert!(
            json.contains(&format!("\"{field}\":")),
            "{field} missing from {json}"
        );
    }
    assert!(
        json.trim().starts_with('{') && json.trim().ends_with('}') && json.lines().count() == 1
    );

    let dir = std::env::temp_dir().join(format!("ramkv-bench-test-{}", std::process::id()));
    let prefix = dir.join("sweep").to_string_lossy().into_owned();
    let out = Command::new(bin)
        .args([
            "--target",
            &target,
            "--sweep",
            "300,600",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--out",
            &prefix,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(format!("{prefix}.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        std::fs::read_to_string(format!("{prefix}.svg"))
            .unwrap()
            .contains("<polyline")
    );
    let _ = std::fs::remove_dir_all(dir);
    srv.shutdown();
}

#[test]
fn bench_answers_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_ramkv-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--hot-conns"));
}

/// An external server that is killed when the test ends.
struct External(Child);

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `program`, and waits until a line of its output contains `ready`.
/// `None` when the program is not installed and the suite does not require it.
fn start_external(
    program: &str,
    args: &[String],
    ready: &str,
    from_stderr: bool,
) -> Option<External> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if std::env::var_os("RAMKV_REQUIRE_EXTERNAL").is_none() => {
            eprintln!("skipping: cannot run {program} ({e}); scripts/test installs it");
            return None;
        }
        Err(e) => panic!("{program} is required (RAMKV_REQUIRE_EXTERNAL): {e}"),
    };
    let out: Box<dyn Read + Send> = if from_stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let ext = External(child);
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break,
            Some(Ok(_)) => {}
            _ => panic!("{program} exited before it was ready"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Some(ext)
}

fn exercise(target: &str) {
    let cfg = config(target, Mode::Open { rate: 2_000.0 }, Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(engine::preload(&cfg.target, &workload(), 2, None, None))
        .expect("preload");
    let r = run(&cfg);
    assert_eq!((r.errors, r.timeouts), (0, 0), "{target}");
    assert!(
        r.completed > 1_500,
        "{target}: only {} replies",
        r.completed
    );
}

#[test]
fn memcache_target_against_real_memcached() {
    let port = free_port();
    let mut args: Vec<String> = [
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-t",
        "1",
        "-vv",
    ]
    .map(String::from)
    .to_vec();
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.is_ok_and(|u| u == "0") {
        // memcached refuses to run as root unless told which user to be.
        args.extend(["-u".to_string(), "root".to_string()]);
    }
    let Some(_memcached) = start_external("memcached", &args, "server listening", true) else {
        return;
    };
    exercise(&format!("memcache://127.0.0.1:{port}"));
}

#[test]
fn redis_target_against_real_redis() {
    let port = free_port();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec();
    let Some(_redis) = start_external("redis-server", &args, "Ready to accept connections", false)
    else {
        return;
    };
    exercise(&format!("redis://127.0.0.1:{port}"));
}

#[test]
fn unreachable_target_is_a_clear_error() {
    let cfg = config(
        &format!("ramkv://127.0.0.1:{}", free_port()),
        Mode::Open { rate: 100.0 },
        Duration::from_millis(100),
    );
    let err = engine::run(&cfg, &workload()).err().expect("fails");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn echo_baseline_target_round_trips() {
    let args: Vec<String> = ["--echo-server", "127.0.0.1:0"].map(String::from).to_vec();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramkv-bench"))
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ramkv-bench runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _guard = External(child);
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let r = run(&config(
        &format!("echo://{addr}"),
        Mode::Open { rate: 1_000.0 },
        Duration::from_millis(500),
    ));
    assert_eq!((r.errors, r.timeouts), (0, 0));
    assert!(r.completed > 300, "{}", r.completed);
}

#[test]
fn slo_search_reports_the_highest_rate_that_meets_it() {
    // The stalling fixture answers at once except for one 200 ms stall, so
    // p99 ≤ 100 ms holds at low rates: the search must report a rate.
    let target = stalling_server();
    let out = Command::new(env!("CARGO_BIN_EXE_ramkv-bench"))
        .args([
            "--target",
            &target,
            "--slo",
            "p99:100ms",
            "--rate",
            "200",
            "--connections",
            "1",
        ])
        .args(["--duration", "300ms", "--warmup", "50ms", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("probe") && log.contains("meets"), "{log}");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.contains("\"offered_rate\":") && json.contains("\"errors\":0"),
        "{json}"
    );
}
