//! ramkv-bench measures what it claims: stalls that a closed loop would
//! hide, the same workload against memcached and Redis, and it tells the
//! user what went wrong: an unreachable target, errors by status, a run
//! that did not keep its schedule.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use ramkv_bench::engine::{self, DISCONNECTED, Mode};

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
    let open = engine::run(&cfg, &workload()).unwrap();
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
    let closed = engine::run(&cfg, &workload()).unwrap();
    assert!(closed.latency.max() >= 190_000_000, "the stall happened");
    let p99 = closed.latency.value_at_quantile(0.99);
    assert!(
        p99 < 20_000_000,
        "closed-loop p99 {p99} ns; it should hide the stall"
    );
}

#[test]
fn json_contract_and_sweep_files() {
    let srv = ramkv_server();
    let target = format!("ramkv://{}", srv.local_addr());
    let out = bench()
        .args(["--target", &target, "--rate", "500", "--duration", "1s"])
        .args(["--warmup", "100ms", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1, "one object per point");
    let v = json(&out.stdout);
    for field in [
        "offered_rate",
        "achieved_rate",
        "completed",
        "errors",
        "errors_by_status",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "adherence",
        "late_p99_us",
        "generator_late",
        "valid",
        "generator_cpu",
        "repeats",
        "p99_us_ci",
    ] {
        assert!(v.get(field).is_some(), "{field} missing from {v}");
    }
    assert_eq!(v["errors"], 0);

    let dir = std::env::temp_dir().join(format!("ramkv-bench-test-{}", std::process::id()));
    let prefix = dir.join("sweep").to_string_lossy().into_owned();
    let out = bench()
        .args(["--target", &target, "--sweep", "300,600", "--repeat", "2"])
        .args(["--duration", "300ms", "--warmup", "100ms", "--out", &prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = std::fs::read_to_string(format!("{prefix}.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.lines().nth(1).unwrap().ends_with(",2"),
        "2 repeats: {csv}"
    );
    let svg = std::fs::read_to_string(format!("{prefix}.svg")).unwrap();
    assert!(
        svg.contains("<polyline") && svg.contains("<circle"),
        "points are marked"
    );
    let _ = std::fs::remove_dir_all(dir);
    srv.shutdown();
}

/// A ramkv server with `dispatchers` inline dispatchers (sharded with
/// SO_REUSEPORT if asked), its admin endpoint and SPIN of up to 10 ms, on
/// ports of its own: the server, its `ramkv://` target and the admin address.
fn inline_server(
    dispatchers: usize,
    reuseport: bool,
) -> (ramkv::Server<ramkv::kv::KvService>, String, String) {
    let svc = ramkv::kv::KvService::new(ramkv::kv::KvOptions {
        max_spin: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .unwrap();
    let srv = ramkv::ServerBuilder::new(svc)
        .listen("127.0.0.1:0")
        .arch(ramkv::Arch::Inline)
        .dispatchers(dispatchers)
        .reuseport(reuseport)
        .admin("127.0.0.1:0")
        .pin(false)
        .start()
        .unwrap();
    let target = format!("ramkv://{}", srv.local_addr());
    let admin = srv.admin_addr().unwrap().to_string();
    (srv, target, admin)
}

/// With --admin, each run of a sweep records which server dispatcher served
/// each connection, in OUT-runs.csv: ramkv-sim replays it.
#[test]
fn sweep_records_each_runs_placement_from_the_admin_endpoint() {
    let (srv, target, admin) = inline_server(3, false);
    let dir = std::env::temp_dir().join(format!("ramkv-bench-placement-{}", std::process::id()));
    let prefix = dir.join("sweep").to_string_lossy().into_owned();
    let out = bench()
        .args(["--target", &target, "--admin", &admin, "--connections", "6"])
        .args(["--sweep", "200", "--repeat", "2", "--duration", "200ms"])
        .args(["--warmup", "50ms", "--out", &prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = std::fs::read_to_string(format!("{prefix}-runs.csv")).unwrap();
    let mut lines = runs.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "placement").unwrap();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "one row per run: {runs}");
    for row in rows {
        let placement: Vec<usize> = row
            .split(',')
            .nth(col)
            .unwrap()
            .split(' ')
            .map(|d| d.parse().unwrap_or_else(|_| panic!("'{d}' in {row}")))
            .collect();
        assert_eq!(placement.len(), 6, "{row}");
        assert!(placement.iter().all(|&d| d < 3), "{row}");
        // And the server's own mean service time over the run.
        let svc = header
            .iter()
            .position(|h| *h == "server_service_us")
            .unwrap();
        let svc: f64 = row.split(',').nth(svc).unwrap().parse().unwrap();
        assert!(svc > 0.0 && svc < 1e6, "{row}");
    }
    // A run starts on a quiet server: it waits for connections still open.
    let mut held = std::net::TcpStream::connect(srv.local_addr()).unwrap();
    let mut ping = bytes::BytesMut::new();
    let req = ramkv_proto::Request {
        id: 1,
        op: Some(ramkv_proto::request::Op::Ping(ramkv_proto::Ping::default())),
    };
    ramkv_proto::encode_frame(&req, &mut ping).unwrap();
    held.write_all(&ping).unwrap();
    // Its reply proves the server has it; the bound keeps a bug from hanging.
    held.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = held.read(&mut [0u8; 64]).unwrap();
    let wait = |within| ramkv_bench::placement::wait_until_idle(&admin, within).unwrap();
    assert_eq!(wait(Duration::ZERO), 1, "a connection left open is counted");
    drop(held);
    assert_eq!(
        wait(Duration::from_secs(30)),
        0,
        "and waited for until closed"
    );
    // Not for other targets' servers.
    let out = bench()
        .args(["--target", "redis://127.0.0.1:1", "--admin", &admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--admin applies to ramkv targets only"));
    let _ = std::fs::remove_dir_all(dir);
    srv.shutdown();
}

/// `--place even` gives every dispatcher as many connections as the others
/// and the hot connections dispatchers of their own, on a shared socket and
/// with SO_REUSEPORT, where the server alone would place them by chance.
#[test]
fn place_even_spreads_connections_and_keeps_hot_ones_apart() {
    for reuseport in [false, true] {
        let (srv, target, admin) = inline_server(4, reuseport);
        let out = bench()
            .args(["--target", &target, "--admin", &admin, "--place", "even"])
            .args(["--connections", "10", "--hot-conns", "3:0.5"])
            // Several generator threads place their connections at once.
            .args(["--threads", if reuseport { "3" } else { "1" }])
            .args(["--rate", "200", "--duration", "100ms", "--warmup", "0s"])
            .args(["--service", "fixed:2ms", "--service-mode", "sleep"])
            .args(["--json", "--quiet"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let placement: Vec<usize> = json["placement"]
            .as_array()
            .unwrap_or_else(|| panic!("no placement in {json}"))
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let mut per = [0; 4];
        placement.iter().for_each(|&d| per[d] += 1);
        per.sort();
        assert_eq!(per, [2, 2, 3, 3], "reuseport {reuseport}: {placement:?}");
        // What the requests asked for, and what the server took (a sleep
        // ends at the deadline or later).
        let asked = json["requested_service_us"].as_f64().unwrap();
        let took = json["server_service_us"].as_f64().unwrap();
        assert_eq!(asked, 2000.0, "{json}");
        assert!((2000.0..1e6).contains(&took), "{json}");
        let hot = &placement[..3];
        assert!(
            hot[0] != hot[1] && hot[1] != hot[2] && hot[0] != hot[2],
            "reuseport {reuseport}: hot ones apart: {placement:?}"
        );
        srv.shutdown();
    }
    // It needs to ask the server, and a server with dispatchers.
    let out = bench()
        .args(["--target", "ramkv://127.0.0.1:1", "--place", "even"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--place even needs --admin"));
    let svc = ramkv::kv::KvService::new(ramkv::kv::KvOptions::default()).unwrap();
    let srv = ramkv::ServerBuilder::new(svc)
        .listen("127.0.0.1:0")
        .arch(ramkv::Arch::ThreadPerConn)
        .admin("127.0.0.1:0")
        .start()
        .unwrap();
    let out = bench()
        .args(["--target", &format!("ramkv://{}", srv.local_addr())])
        .args(["--admin", &srv.admin_addr().unwrap().to_string()])
        .args(["--place", "even", "--duration", "100ms", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--place even needs a server with dispatchers"),
        "{}",
        text(&out.stderr)
    );
    srv.shutdown();
}

#[test]
fn an_unreachable_target_fails_at_once_with_the_address_and_the_cause() {
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = bench()
        .args(["--target", &format!("ramkv://{addr}"), "--rate", "100"])
        .args(["--duration", "10s", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to {addr}")) && err.contains("refused"),
        "{err}"
    );
    // Not after the 10 s run: the probe fails before the run starts.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_target_that_never_answers_fails_within_the_connect_timeout() {
    // It accepts the TCP connection but never answers AUTH.
    let target = silent_server();
    let dir = std::env::temp_dir().join(format!("ramkv-bench-silent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t").unwrap();
    let out = bench()
        .args(["--target", &target, "--rate", "100", "--duration", "10s"])
        .args(["--connect-timeout", "300ms", "--quiet", "--auth-token-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no answer within 300ms"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn errors_are_reported_by_status_with_the_servers_message() {
    // SPIN without --enable-spin-op: every request fails the same way.
    let srv = ramkv_server();
    let target = format!("ramkv://{}", srv.local_addr());
    let dir = std::env::temp_dir().join(format!("ramkv-bench-errors-{}", std::process::id()));
    let prefix = dir.join("sweep").to_string_lossy().into_owned();
    let out = bench()
        .args([
            "--target",
            &target,
            "--service",
            "fixed:1us",
            "--rate",
            "300",
        ])
        .args(["--duration", "300ms", "--warmup", "50ms", "--json"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a run where every request failed exits non-zero"
    );
    let v = json(&out.stdout);
    assert_eq!(v["completed"], 0);
    assert!(v["p99_us"].is_null(), "no percentile without replies: {v}");
    let top = &v["errors_by_status"][0];
    assert_eq!(top["status"], "INVALID_REQUEST");
    assert!(
        top["message"]
            .as_str()
            .unwrap()
            .contains("--enable-spin-op"),
        "{top}"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("INVALID_REQUEST ×") && err.contains("--enable-spin-op"),
        "{err}"
    );

    // A sweep where everything failed writes no plot.
    let out = bench()
        .args([
            "--target",
            &target,
            "--service",
            "fixed:1us",
            "--sweep",
            "200",
        ])
        .args(["--duration", "200ms", "--warmup", "50ms", "--out", &prefix])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!std::path::Path::new(&format!("{prefix}.svg")).exists());
    let _ = std::fs::remove_dir_all(dir);
    srv.shutdown();
}

#[test]
fn requests_lost_with_their_connection_are_errors_not_silence() {
    // The fixture answers 50 requests per connection, then hangs up.
    let cfg = config(
        &closing_server(50),
        Mode::Open { rate: 1_000.0 },
        Duration::from_millis(500),
    );
    let r = engine::run(&cfg, &workload()).unwrap();
    let (status, lost, why) = r.errors.by_count()[0];
    assert_eq!(status, DISCONNECTED);
    assert!(why.contains("closed the connection"), "{why}");
    // 2 connections × 50 answered, some during the 200 ms warmup; the rest
    // of ~500 measured requests are lost, not silently dropped.
    assert!(lost > 300, "only {lost} counted lost");
    assert_eq!(r.timeouts, 0, "a closed connection is not a timeout");
}

#[test]
fn a_run_that_misses_its_schedule_is_invalid_and_strict_fails_it() {
    // An on-time threshold of 0 ns: no send can leave at its exact
    // nanosecond, so adherence is ~0 on any machine.
    let srv = ramkv_server();
    let target = format!("ramkv://{}", srv.local_addr());
    let run = |strict: bool| {
        let mut cmd = bench();
        cmd.args(["--target", &target, "--rate", "500", "--duration", "300ms"])
            .args(["--warmup", "50ms", "--json", "--on-time", "0ns"]);
        if strict {
            cmd.arg("--strict");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    assert!(out.status.success(), "without --strict the run is reported");
    let v = json(&out.stdout);
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["generator_late"], true);
    assert!(v["adherence"].as_f64().unwrap() < 0.95);
    assert!(text(&out.stderr).contains("INVALID RUN"));
    assert!(!run(true).status.success(), "--strict fails an invalid run");
    srv.shutdown();
}

#[test]
fn bench_answers_help() {
    let out = bench().arg("--help").output().unwrap();
    let help = text(&out.stdout);
    assert!(out.status.success() && help.contains("--hot-conns") && help.contains("--pacing"));
}

fn exercise(target: &str) {
    let cfg = config(target, Mode::Open { rate: 2_000.0 }, Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(engine::preload(&cfg, &workload()))
        .expect("preload");
    let r = engine::run(&cfg, &workload()).unwrap();
    assert_eq!((r.errors.total(), r.timeouts), (0, 0), "{target}");
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
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim().to_string());
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
fn echo_baseline_target_round_trips() {
    let mut child = bench()
        .args(["--echo-server", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ramkv-bench runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _guard = External(child);
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let r = engine::run(
        &config(
            &format!("echo://{addr}"),
            Mode::Open { rate: 1_000.0 },
            Duration::from_millis(500),
        ),
        &workload(),
    )
    .unwrap();
    assert_eq!((r.errors.total(), r.timeouts), (0, 0));
    assert!(r.completed > 300, "{}", r.completed);
}

#[test]
fn slo_search_reports_the_highest_rate_that_meets_it() {
    // The stalling fixture answers at once except for one 200 ms stall, so
    // p99 ≤ 100 ms holds at low rates: the search must report a rate. (A
    // generous on-time threshold: a probe that is invalid because the test
    // machine is busy would not "meet" the SLO, and this tests the search.)
    let out = bench()
        .args(["--target", &stalling_server(), "--slo", "p99:100ms"])
        .args(["--rate", "200", "--connections", "1", "--on-time", "50ms"])
        .args(["--duration", "300ms", "--warmup", "50ms", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("probe") && log.contains("meets"), "{log}");
    let v = json(&out.stdout);
    assert!(
        v["offered_rate"].as_f64().unwrap() >= 200.0 && v["errors"] == 0,
        "{v}"
    );
}

/// Writes a CA, a server certificate for 127.0.0.1 it signed, its key and
/// a token into `dir`.
fn secure_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("token"), "bench-secret\n").unwrap();
}

#[test]
fn bench_takes_a_token_file_and_a_tls_ca() {
    let dir = std::env::temp_dir().join(format!("ramkv-bench-secure-{}", std::process::id()));
    secure_files(&dir);
    let kv = ramkv::kv::KvOptions {
        auth_token_file: Some(dir.join("token")),
        ..Default::default()
    };
    let srv = ramkv_server_with(kv, Some((dir.join("server.pem"), dir.join("server.key"))));
    let out = bench()
        .args(["--target", &format!("ramkv://{}", srv.local_addr())])
        .args([
            "--rate",
            "500",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--json",
        ])
        .arg("--tls-ca")
        .arg(dir.join("ca.pem"))
        .arg("--auth-token-file")
        .arg(dir.join("token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json(&out.stdout);
    assert_eq!(
        (v["errors"].as_u64(), v["timeouts"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(v["completed"].as_u64().unwrap() > 0);
    srv.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
