//! Limits, authentication, the admin endpoint, and faults under load. Each
//! test shows what a client sees when a limit is hit, and that the server
//! keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{HANG_GUARD, Raw, frame, server, spawn_server};
use ramkv::Arch;
use ramkv_client::{Client, ClientOptions, Error};
use ramkv_proto::{self as pb, request::Op};
use ramkv_proto::{Request, Status};

fn ping_ok(raw: &mut Raw, id: u64) {
    raw.send(id, Op::Ping(pb::Ping::default()));
    let r = raw.recv().expect("reply");
    assert_eq!((r.id, r.status), (id, Status::Ok as i32), "{}", r.message);
}

fn token_file(token: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ramkv-token-{}-{token}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn auth(token: &str) -> Op {
    Op::Auth(pb::Auth {
        token: token.as_bytes().to_vec().into(),
    })
}

#[test]
fn authentication_wrong_token_no_token_and_right_token() {
    for arch in [Arch::Lb, Arch::Inline, Arch::ThreadPerConn] {
        let path = token_file("open-sesame");
        let srv = server(|c| {
            c.arch = arch;
            c.auth_token_file = Some(path.clone());
        });
        // No token: the first request is refused and the connection closed.
        let mut raw = Raw::connect(srv.local_addr());
        raw.send(1, Op::Ping(pb::Ping::default()));
        let r = raw.recv().unwrap();
        assert_eq!(r.status, Status::Unauthenticated as i32, "{arch:?}");
        assert!(raw.recv().is_none(), "{arch:?}: must close");
        // Wrong token: refused, closed, and the token is not echoed.
        let mut raw = Raw::connect(srv.local_addr());
        raw.send(1, auth("sesame"));
        let r = raw.recv().unwrap();
        assert_eq!(r.status, Status::Unauthenticated as i32);
        assert!(!r.message.contains("sesame"));
        assert!(raw.recv().is_none());
        // Right token, then requests in the same write: all served.
        let mut raw = Raw::connect(srv.local_addr());
        let mut burst = frame(&Request {
            id: 1,
            op: Some(auth("open-sesame")),
        });
        burst.extend(frame(&Request {
            id: 2,
            op: Some(Op::Ping(pb::Ping::default())),
        }));
        raw.send_bytes(&burst);
        assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
        assert_eq!(raw.recv().unwrap().id, 2);
        ping_ok(&mut raw, 3);
        srv.shutdown();
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_authenticates_from_a_token_file() {
    let path = token_file("lib-token");
    let srv = server(|c| c.auth_token_file = Some(path.clone()));
    let opts = ClientOptions {
        auth_token_file: Some(path.clone()),
        ..Default::default()
    };
    let c = Client::connect_with(srv.local_addr(), opts).await.unwrap();
    c.put("k", "v").await.unwrap();
    let wrong = token_file("not-it");
    let opts = ClientOptions {
        auth_token_file: Some(wrong.clone()),
        ..Default::default()
    };
    match Client::connect_with(srv.local_addr(), opts).await {
        Err(Error::Unauthenticated(msg)) => {
            assert!(!msg.contains("not-it") && !msg.contains("lib-token"))
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    // Without a token, the first request fails and the connection ends.
    let c2 = Client::connect(srv.local_addr()).await.unwrap();
    assert!(matches!(c2.get("k").await, Err(Error::Unauthenticated(_))));
    srv.shutdown();
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(wrong);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    for arch in [Arch::Lb, Arch::ThreadPerConn] {
        let srv = server(|c| {
            c.arch = arch;
            c.limits.idle_timeout = Duration::from_millis(300);
        });
        let mut raw = Raw::connect(srv.local_addr());
        ping_ok(&mut raw, 1);
        let start = Instant::now();
        // The server closes the connection; this read returns at that event.
        assert!(raw.recv().is_none(), "{arch:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{arch:?}: closed too early"
        );
        srv.shutdown();
    }
}

#[test]
fn a_frame_that_never_finishes_is_cut_off() {
    for arch in [Arch::Lb, Arch::Inline, Arch::ThreadPerConn] {
        let srv = server(|c| {
            c.arch = arch;
            c.limits.frame_timeout = Duration::from_millis(300);
        });
        let mut raw = Raw::connect(srv.local_addr());
        // Slowloris: a header promising 100 bytes, then only 10 of them.
        raw.send_bytes(&[0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let r = raw.recv().expect("an error before the close");
        assert_eq!(r.status, Status::InvalidRequest as i32, "{arch:?}");
        assert!(r.message.contains("incomplete frame"), "{}", r.message);
        assert!(raw.recv().is_none());
        ping_ok(&mut Raw::connect(srv.local_addr()), 1);
        srv.shutdown();
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn admin_endpoint_serves_prometheus_metrics() {
    let srv = server(|c| c.admin = Some("127.0.0.1:0".parse().unwrap()));
    let mut raw = Raw::connect(srv.local_addr());
    for id in 1..=3 {
        ping_ok(&mut raw, id);
    }
    // PINGs are quick: the dispatcher runs them itself while no worker is
    // ready. STATS goes through the queue.
    raw.send(4, Op::Stats(pb::Stats {}));
    assert_eq!(raw.recv().unwrap().status, 0);
    let admin = srv.admin_addr().unwrap();
    // An idle client that never sends a request must not hold up a scrape
    // (the old endpoint served one connection at a time, for 5 s each).
    let _idle = std::net::TcpStream::connect(admin).unwrap();
    let started = std::time::Instant::now();
    let text = http_get(admin, "/metrics");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "a scrape waited {:?} behind an idle connection",
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("# TYPE ramkv_requests counter"), "{text}");
    assert!(
        text.contains("ramkv_requests_total{op=\"ping\",status=\"OK\"} 3"),
        "{text}"
    );
    for family in [
        "ramkv_connections_open",
        "ramkv_bytes_in_total",
        "ramkv_queue_depth",
        "ramkv_worker_parks_total",
        "ramkv_dispatcher_busy_ns_total",
        "ramkv_build_info{",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    // Latencies as histograms with cumulative buckets, which aggregate
    // across servers, instead of quantiles since start.
    assert!(
        text.contains("# TYPE ramkv_service_time_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("ramkv_service_time_seconds_bucket{le=\"+Inf\"} 4"),
        "{text}"
    );
    assert!(text.contains("ramkv_queue_delay_seconds_count 1"), "{text}");
    assert!(!text.contains("quantile="));
    assert!(http_get(admin, "/health").starts_with("HTTP/1.1 200"));
    assert!(http_get(admin, "/nope").starts_with("HTTP/1.1 404"));
    srv.shutdown();
}

/// `Server::connections` and the admin endpoint's `/connections` list
/// every open connection with its peer and the dispatcher that serves it, in
/// every architecture: ramkv-bench reads it to record which dispatcher got
/// each of its connections.
#[test]
fn open_connections_are_listed_with_their_dispatcher() {
    for (name, adjust) in common::architectures() {
        let mut dispatchers = 0;
        let srv = server(|c| {
            adjust(c);
            dispatchers = c.dispatchers;
            c.admin = Some("127.0.0.1:0".into());
        });
        let tpc = name == "thread-per-conn";
        let mut clients: Vec<Raw> = (0..4).map(|_| Raw::connect(srv.local_addr())).collect();
        // A reply proves the server has accepted and registered the connection.
        for (id, raw) in clients.iter_mut().enumerate() {
            ping_ok(raw, id as u64 + 1);
        }
        let listed = srv.connections();
        assert_eq!(listed.len(), 4, "{name}: {listed:?}");
        for raw in &clients {
            let me = raw.stream.local_addr().unwrap();
            let c = listed.iter().find(|c| c.peer == Some(me));
            let c = c.unwrap_or_else(|| panic!("{name}: {me} not in {listed:?}"));
            match c.dispatcher {
                None => assert!(tpc, "{name}: no dispatcher for {me}"),
                Some(d) => assert!(!tpc && d < dispatchers, "{name}: dispatcher {d}"),
            }
        }
        let text = http_get(srv.admin_addr().unwrap(), "/connections");
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let mut lines = body.lines();
        assert_eq!(
            lines.next(),
            Some("# peer dispatcher age_s"),
            "{name}: {body}"
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(' ').collect()).collect();
        assert_eq!(rows.len(), 4, "{name}: {body}");
        for raw in &clients {
            let me = raw.stream.local_addr().unwrap().to_string();
            let row = rows.iter().find(|r| r[0] == me);
            let row = row.unwrap_or_else(|| panic!("{name}: {me} not in {body}"));
            let want = listed
                .iter()
                .find(|c| c.peer.map(|p| p.to_string()) == Some(me.clone()));
            let want = want
                .and_then(|c| c.dispatcher)
                .map_or("-".into(), |d| d.to_string());
            assert_eq!(row[1], want, "{name}: {body}");
        }
        clients.clear();
        srv.shutdown();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Polls STATS until `name` equals `want`; the event being awaited is the
/// server finishing its own cleanup. Fails after the hang guard.
async fn await_stat(c: &Client, name: &str, want: u64) {
    let start = Instant::now();
    loop {
        let stats = c.stats().await.unwrap();
        let v = common::stat(&stats, name);
        if v == want {
            return;
        }
        assert!(
            start.elapsed() < HANG_GUARD,
            "{name} stuck at {v}, expected {want}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_opened_and_dropped() {
    let (proc, addr) = spawn_server(&["--workers", "1"]);
    let c = Client::connect(addr).await.unwrap();
    let v = c.put("survivor", "intact").await.unwrap();
    let baseline = rss_kib(proc.0.id());
    for _ in 0..50 {
        let mut batch = Vec::with_capacity(200);
        for _ in 0..200 {
            batch.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        drop(batch);
    }
    await_stat(&c, "ramkv_connections_open", 1).await;
    assert_eq!(
        common::stat(&c.stats().await.unwrap(), "ramkv_connections_total"),
        10_001
    );
    let after = rss_kib(proc.0.id());
    assert!(
        after < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
    let e = c.get("survivor").await.unwrap().unwrap();
    assert_eq!((e.value, e.version), ("intact".into(), v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_paused_then_dropped() {
    let (_proc, addr) = spawn_server(&[
        "--workers",
        "1",
        "--write-timeout",
        "500ms",
        "--max-outbound",
        "256KiB",
        "--max-frame",
        "128KiB",
        "--max-value",
        "100KiB",
    ]);
    let c = Client::connect(addr).await.unwrap();
    let v = c.put("big", vec![b'x'; 64 * 1024]).await.unwrap();
    // Thousands of 64 KiB GETs, replies never read: the socket buffers
    // fill, the server stops reading this client, then drops it.
    let mut stuck = std::net::TcpStream::connect(addr).unwrap();
    let mut burst = Vec::new();
    for id in 1..=2_000 {
        burst.extend(frame(&Request {
            id,
            op: Some(Op::Get(pb::Get { key: "big".into() })),
        }));
    }
    let writer = std::thread::spawn(move || {
        // Blocks once the server stops reading; fails once it has dropped us.
        let _ = stuck.write_all(&burst);
        stuck
    });
    await_stat(&c, "ramkv_connections_open", 1).await;
    drop(writer.join().unwrap());
    // Everyone else is still served, and the acknowledged put is intact.
    let e = c.get("big").await.unwrap().unwrap();
    assert_eq!((e.value.len(), e.version), (64 * 1024, v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_or_closes_and_exits_zero() {
    let (mut proc, addr) = spawn_server(&["--workers", "2"]);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        tasks.spawn(async move {
            let c = Client::connect(addr).await.unwrap();
            let mut acked = 0u64;
            for i in 0u64.. {
                match c.put(format!("t{t}-{i}"), format!("{i}")).await {
                    Ok(_) => acked += 1,
                    // The close itself, or, once the client dials again,
                    // the refusal of a server that has stopped listening.
                    Err(Error::Closed(_) | Error::Connect { .. }) => return acked,
                    Err(e) => {
                        panic!("under shutdown a call either succeeds or sees the close, got {e}")
                    }
                }
            }
            acked
        });
    }
    // Let the load get going, then signal.
    let probe = Client::connect(addr).await.unwrap();
    await_stat_at_least(
        &probe,
        r#"ramkv_requests_total{op="put",status="OK"}"#,
        2_000,
    )
    .await;
    drop(probe);
    proc.sigterm();
    let mut total = 0;
    while let Some(acked) = tasks.join_next().await {
        total += acked.unwrap();
    }
    assert!(total >= 2_000);
    let status = proc.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

async fn await_stat_at_least(c: &Client, name: &str, want: u64) {
    let start = Instant::now();
    while common::stat(&c.stats().await.unwrap(), name) < want {
        assert!(start.elapsed() < HANG_GUARD, "{name} never reached {want}");
        tokio::task::yield_now().await;
    }
}

#[test]
fn clients_vanishing_mid_frame_leave_the_server_serving() {
    let srv = server(|_| {});
    for cut in [1usize, 3, 4, 7, 20] {
        let mut raw = Raw::connect(srv.local_addr());
        let bytes = frame(&Request {
            id: 1,
            op: Some(Op::Put(pb::Put {
                key: "k".into(),
                value: vec![1; 40].into(),
                expected_version: None,
            })),
        });
        raw.send_bytes(&bytes[..cut]);
        drop(raw);
    }
    let mut raw = Raw::connect(srv.local_addr());
    raw.send(1, Op::Get(pb::Get { key: "k".into() }));
    assert_eq!(
        raw.recv().unwrap().status,
        Status::NotFound as i32,
        "a half-sent put must not be applied"
    );
    srv.shutdown();
}

#[test]
fn the_in_flight_cap_stops_reading_instead_of_queueing() {
    // Cap 2, one worker: of 12 slow requests sent at once, at most 2 are
    // ever inside the server, so the queue never holds more than 2 (without
    // the cap it would hold 11). The rest wait in TCP buffers, and every one
    // is still answered. The depth is read from /metrics, whose thread does
    // not queue behind the slow requests as a STATS request would.
    let srv = server(|c| {
        c.workers = Some(1);
        c.limits.max_in_flight = 2;
        c.enable_spin_op = true;
        c.admin = Some("127.0.0.1:0".parse().unwrap());
    });
    let admin = srv.admin_addr().unwrap();
    let depth = || -> u64 {
        let text = http_get(admin, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("ramkv_queue_depth "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let mut raw = Raw::connect(srv.local_addr());
    let mut burst = Vec::new();
    for id in 1..=12 {
        burst.extend(frame(&Request {
            id,
            op: Some(Op::Spin(pb::Spin {
                nanos: 5_000_000,
                sleep: false,
            })),
        }));
    }
    raw.send_bytes(&burst);
    let reader = std::thread::spawn(move || {
        (1..=12)
            .map(|_| raw.recv().expect("reply").status)
            .collect::<Vec<_>>()
    });
    let mut max_depth = 0;
    while !reader.is_finished() {
        max_depth = max_depth.max(depth());
    }
    assert!(
        max_depth <= 2,
        "queue depth reached {max_depth} with a cap of 2 in flight"
    );
    assert!(
        reader
            .join()
            .unwrap()
            .iter()
            .all(|&s| s == Status::Ok as i32)
    );
    srv.shutdown();
}

#[test]
fn a_failed_start_leaves_nothing_running() {
    // The admin address is taken, so the start fails, after the listener
    // and the workers were already up. They must be gone again: the same
    // port can be listened on at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = |admin: Option<String>| {
        let setup = common::Setup {
            admin,
            ..Default::default()
        };
        setup
            .builder()
            .unwrap()
            .listen(format!("127.0.0.1:{port}"))
            .start()
    };
    match start(Some(taken.local_addr().unwrap().to_string())) {
        Err(e) => assert!(e.to_string().contains("admin endpoint"), "{e}"),
        Ok(_) => panic!("started with its admin address taken"),
    }
    let srv = start(None).expect("the failed start released its port");
    ping_ok(&mut Raw::connect(srv.local_addr()), 1);
    srv.shutdown();
}

#[test]
fn the_idle_timeout_counts_from_the_last_activity() {
    // Active at t0 and again at t0 + 300 ms, then silent: the connection
    // must live a full idle timeout past the second request, even though
    // the server's timer was armed at t0 (it is moved lazily when it fires).
    let srv = server(|c| c.limits.idle_timeout = Duration::from_millis(1_000));
    let mut raw = Raw::connect(srv.local_addr());
    ping_ok(&mut raw, 1);
    std::thread::sleep(Duration::from_millis(300)); // the client's pause, not a synchronisation
    ping_ok(&mut raw, 2);
    let last = Instant::now();
    assert!(raw.recv().is_none());
    assert!(
        last.elapsed() >= Duration::from_millis(900),
        "closed {:?} after the last request",
        last.elapsed()
    );
    srv.shutdown();
}

/// Yields until the client notices that its connection has gone.
async fn await_disconnect(c: &Client) {
    let start = Instant::now();
    while c.is_connected() {
        assert!(start.elapsed() < HANG_GUARD, "the connection never closed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idled_out_by_the_server_dials_again_and_authenticates_again() {
    let path = token_file("redial-token");
    let srv = server(|c| {
        c.limits.idle_timeout = Duration::from_millis(200);
        c.auth_token_file = Some(path.clone());
    });
    let opts = ClientOptions {
        auth_token_file: Some(path.clone()),
        ..Default::default()
    };
    let c = Client::connect_with(srv.local_addr(), opts).await.unwrap();
    let v = c.put("k", "kept").await.unwrap();
    await_disconnect(&c).await;
    // The next call dials, authenticates and succeeds.
    let got = c.get("k").await.unwrap().unwrap();
    assert_eq!((&got.value[..], got.version), (&b"kept"[..], v));
    assert!(c.is_connected());
    let stats = c.stats().await.unwrap();
    assert_eq!(common::stat(&stats, "ramkv_connections_total"), 2);
    srv.shutdown();
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_after_a_drop_share_one_new_connection() {
    let srv = server(|c| c.limits.idle_timeout = Duration::from_millis(200));
    let c = Client::connect(srv.local_addr()).await.unwrap();
    c.ping().await.unwrap();
    await_disconnect(&c).await;
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.put(format!("k{i}"), "v").await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let stats = c.stats().await.unwrap();
    assert_eq!(common::stat(&stats, "ramkv_connections_total"), 2);
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dials_a_restarted_server_on_the_same_address() {
    let first = server(|_| {});
    let addr = first.local_addr();
    let c = Client::connect(addr).await.unwrap();
    c.put("k", "v").await.unwrap();
    first.shutdown();
    await_disconnect(&c).await;
    let second = server(|cfg| cfg.listen = Some(addr.to_string()));
    // A new server, so the key is gone, but the same client works.
    assert_eq!(c.get("k").await.unwrap(), None);
    second.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_dropped_client_fails_with_closed() {
    let srv = server(|c| c.limits.idle_timeout = Duration::from_millis(200));
    let opts = ClientOptions {
        reconnect: false,
        ..Default::default()
    };
    let c = Client::connect_with(srv.local_addr(), opts).await.unwrap();
    c.ping().await.unwrap();
    await_disconnect(&c).await;
    assert!(matches!(c.ping().await, Err(Error::Closed(_))));
    srv.shutdown();
}

/// Reads one length-prefixed request from a blocking socket.
fn read_request(s: &mut TcpStream) -> Request {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    prost::Message::decode(&body[..]).unwrap()
}

#[tokio::test] // current_thread: spawned callers run only when this task yields
async fn callers_waiting_on_a_failed_redial_share_its_error_instead_of_each_dialling() {
    // A scripted server: it accepts the first connection and its AUTH, then
    // drops it on cue; it takes the re-dial's AUTH but never answers it, and
    // drops that connection on cue too, so the re-dial fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (cue, cues) = std::sync::mpsc::channel::<()>();
    let script = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        let auth = read_request(&mut first);
        let ok = ramkv_proto::Response {
            id: auth.id,
            status: Status::Ok as i32,
            ..Default::default()
        };
        first.write_all(&frame(&ok)).unwrap();
        cues.recv().unwrap();
        drop(first);
        let (mut redial, _) = listener.accept().unwrap();
        read_request(&mut redial);
        cues.recv().unwrap();
        drop(redial);
        cues.recv().unwrap();
        listener.set_nonblocking(true).unwrap();
        listener.accept().is_ok() // a third dial?
    });
    let path = token_file("scripted");
    let opts = ClientOptions {
        auth_token_file: Some(path.clone()),
        ..Default::default()
    };
    let c = Client::connect_with(addr, opts).await.unwrap();
    cue.send(()).unwrap(); // drop the first connection
    await_disconnect(&c).await;
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.ping().await })
        })
        .collect();
    // One poll each: one caller is dialling, the other seven wait behind it.
    tokio::task::yield_now().await;
    cue.send(()).unwrap(); // fail the re-dial
    for caller in callers {
        assert!(matches!(caller.await.unwrap(), Err(Error::Closed(_))));
    }
    cue.send(()).unwrap();
    assert!(!script.join().unwrap(), "a waiting caller dialled again");
    let _ = std::fs::remove_file(path);
}
