//! The server process as an operator runs it: how long it takes to stop, what
//! it refuses to start with, what its logs look like, and the memory one
//! misbehaving client can make it hold.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{HANG_GUARD, Raw, ServerProcess, frame, spawn_server, spawn_server_under};
use ramkv_proto::{self as pb, Request, Status, request::Op};

const SERVER: &str = env!("CARGO_BIN_EXE_ramkv-server");

/// Runs the server with at most 40 file descriptors.
const PRLIMIT_40: &[&str] = &["prlimit", "--nofile=40", "--"];

/// Polls `/proc` until some thread of `pid` is asleep in a `nanosleep`
/// (the SPIN op in sleep mode): the event that proves a request is running.
fn await_sleeping_thread(pid: u32) {
    let start = Instant::now();
    loop {
        let sleeping = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                matches!(call.split(' ').next(), Some("35" | "230"))
            });
        if sleeping {
            return;
        }
        assert!(start.elapsed() < HANG_GUARD, "no request ever started");
        std::thread::yield_now();
    }
}

/// User plus system CPU seconds `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15; after the name, at 11 and 12.
    (f[10] + f[11]) as f64 / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn stat(addr: std::net::SocketAddr, name: &str) -> u64 {
    let mut raw = Raw::connect(addr);
    raw.send(1, Op::Stats(pb::Stats {}));
    let Some(pb::response::Result::Stats(s)) = raw.recv().unwrap().result else {
        panic!("no stats")
    };
    s.metrics
        .iter()
        .filter(|m| m.name.starts_with(name))
        .map(|m| m.value)
        .sum()
}

#[test]
fn the_drain_timeout_bounds_the_process_exit() {
    // A 3 s request runs when SIGTERM arrives; with a 1 s drain timeout the
    // process must be gone soon after 1 s (it used to wait for the request:
    // 2.8 s).
    for arch in [
        &["--workers", "2"][..],
        &["--arch", "inline"],
        &["--arch", "thread-per-conn"],
    ] {
        let mut args = vec![
            "--enable-spin-op",
            "--spin-op-max-us",
            "5000000",
            "--drain-timeout",
            "1s",
        ];
        args.extend_from_slice(arch);
        let (mut srv, addr) = spawn_server(&args);
        let mut raw = Raw::connect(addr);
        raw.send(
            1,
            Op::Spin(pb::Spin {
                nanos: 3_000_000_000,
                sleep: true,
            }),
        );
        await_sleeping_thread(srv.0.id());
        let term = Instant::now();
        srv.sigterm();
        srv.0.wait().unwrap();
        let took = term.elapsed();
        assert!(
            took < Duration::from_millis(2_200),
            "{arch:?}: exited {took:?} after SIGTERM"
        );
    }
}

#[test]
fn thread_per_conn_bounds_a_whole_reply_write_by_the_write_timeout() {
    // A client that never reads its 20 MB of replies: each write blocks, and
    // the write timeout (2 s) must bound the whole reply, not each system
    // call (a never-reading client used to be dropped after about 3x).
    let (_srv, addr) = spawn_server(&["--arch", "thread-per-conn", "--write-timeout", "2s"]);
    let mut raw = Raw::connect(addr);
    raw.send(
        1,
        Op::Put(pb::Put {
            key: "big".into(),
            value: vec![b'v'; 1 << 20].into(),
            expected_version: None,
        }),
    );
    assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    let burst: Vec<u8> = (2..22)
        .flat_map(|id| {
            frame(&Request {
                id,
                op: Some(Op::Get(pb::Get { key: "big".into() })),
            })
        })
        .collect();
    let sent = Instant::now();
    raw.send_bytes(&burst);
    let start = Instant::now();
    // The event: the server's own count of open connections drops to the
    // one this check uses.
    while stat(addr, "ramkv_connections_open") > 1 {
        assert!(start.elapsed() < HANG_GUARD, "never dropped");
        std::thread::yield_now();
    }
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(3_500),
        "dropped after {took:?}"
    );
}

#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // With its file descriptors exhausted (a limit of 40), every accept
    // fails with EMFILE while connections wait in the backlog. The acceptor
    // must back off; the thread-per-conn acceptor used to retry at once,
    // burning a core.
    for arch in ["thread-per-conn", "lb"] {
        let args = ["--arch", arch, "--log-level", "error"];
        let (srv, addr) = spawn_server_under(PRLIMIT_40, &args);
        let conns: Vec<TcpStream> = (0..60)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect();
        assert!(
            conns.len() > 40,
            "{arch}: the backlog took only {}",
            conns.len()
        );
        let before = cpu_seconds(srv.0.id());
        std::thread::sleep(Duration::from_secs(1)); // the window CPU is measured over
        let used = cpu_seconds(srv.0.id()) - before;
        assert!(used < 0.3, "{arch}: {used:.2} s of CPU in 1 s of EMFILE");
    }
}

#[test]
fn thread_per_conn_exits_on_sigterm_with_every_file_descriptor_in_use() {
    // The acceptor blocks in accept, and shutdown must wake it with every
    // file descriptor held by an idle client and none waiting to be
    // accepted. It used to be woken by a connection of the server's own,
    // which needs a descriptor; it is now woken by shutting the listening
    // socket down, which needs none. (Here the old wake-up also got through:
    // shutdown frees other descriptors first. This guards the behaviour.)
    let args = ["--arch", "thread-per-conn", "--log-level", "error"];
    let (mut srv, addr) = spawn_server_under(PRLIMIT_40, &args);
    // Connect until one is not answered: no descriptor is left to accept it.
    let answered = |c: &mut TcpStream, id: u64| {
        c.write_all(&frame(&Request {
            id,
            op: Some(Op::Ping(pb::Ping::default())),
        }))
        .unwrap();
        let mut header = [0u8; 4];
        c.read_exact(&mut header).is_ok()
    };
    let mut held = Vec::new();
    let mut waiting = loop {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if !answered(&mut c, 1) {
            break c;
        }
        held.push(c);
        assert!(held.len() < 100, "the descriptor limit did not bind");
    };
    // Free one: the waiting connection takes it, and none waits after it.
    drop(held.remove(0));
    waiting.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut rest = [0u8; 64];
    assert!(waiting.read(&mut rest).unwrap() > 0, "never accepted");
    let term = Instant::now();
    srv.sigterm();
    while srv.0.try_wait().unwrap().is_none() {
        assert!(
            term.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling for the exit
    }
}

#[test]
fn degenerate_configurations_are_refused_with_a_clear_message() {
    for (args, says) in [
        (&["--idle-timeout", "0s"][..], "--idle-timeout"),
        (&["--frame-timeout", "0ms"], "--frame-timeout"),
        (&["--write-timeout", "0s"], "--write-timeout"),
        (&["--max-outbound", "0"], "--max-outbound"),
        (&["--max-outbound", "1KiB"], "--max-outbound"),
        (&["--max-request-memory", "1MiB"], "--max-request-memory"),
        (&["--max-in-flight", "0"], "--max-in-flight"),
        (&["--queue-bound", "0"], "--queue-bound"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-frame", "64KiB"], "--max-value"),
        (&["--max-key", "8MiB"], "--max-key"),
        (&["--max-frame", "8"], "--max-frame"),
        (&["--dispatchers", "0"], "--dispatchers"),
        (&["--arch", "inline", "--workers", "2"], "--workers"),
        (
            &["--arch", "inline", "--queue-bound", "10"],
            "--queue-bound",
        ),
        (
            &["--arch", "thread-per-conn", "--spin-us", "10"],
            "--spin-us",
        ),
        (
            &["--arch", "inline", "--worker-policy", "batch"],
            "--worker-policy",
        ),
        (&["--arch", "inline", "--no-quick-path"], "--no-quick-path"),
    ] {
        let out = Command::new(SERVER)
            .args(["--listen", "127.0.0.1:0", "--no-pin"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal_and_listen_takes_a_host_name() {
    let mut child = Command::new(SERVER)
        .args(["--listen", "localhost:0", "--no-pin", "--log-level", "info"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let mut stderr = child.stderr.take().unwrap();
    let srv = ServerProcess(child);
    srv.sigterm();
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).unwrap();
    assert!(
        logs.contains("serving") && logs.contains("shut down"),
        "{logs}"
    );
    assert!(
        !logs.contains('\x1b'),
        "colour codes in a log file: {logs:?}"
    );
}

#[test]
fn pipelined_gets_of_a_large_value_cannot_grow_the_reply_memory_unbounded() {
    // Pipelined GETs of a 1 MiB value, never read. Each reply is reserved
    // for at admission, so once --max-outbound (8 MiB) is held the server
    // stops admitting, then stops reading, and the client's writes back up.
    // (Before, it ran every GET it read: 1,024 of them grew it by 1 GiB.)
    let (srv, addr) = spawn_server(&[]);
    let pid = srv.0.id();
    let mut raw = Raw::connect(addr);
    raw.send(
        1,
        Op::Put(pb::Put {
            key: "big".into(),
            value: vec![b'v'; 1 << 20].into(),
            expected_version: None,
        }),
    );
    assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    let baseline = rss_kib(pid);
    let chunk: Vec<u8> = (2..65_536)
        .flat_map(|id| {
            frame(&Request {
                id,
                op: Some(Op::Get(pb::Get { key: "big".into() })),
            })
        })
        .collect();
    // The event: a write that would block, because the server stopped
    // reading. An unbounded server reads on, running every GET.
    raw.stream.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    'backed_up: loop {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match raw.stream.write(rest) {
                Ok(n) => (rest, sent) = (&rest[n..], sent + n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 'backed_up,
                Err(e) => panic!("write: {e}"),
            }
        }
        assert!(sent < 256 << 20, "the server read {sent} bytes of GETs");
    }
    let ran = stat(addr, "ramkv_requests_total{op=\"get\"");
    let grown = rss_kib(pid).saturating_sub(baseline);
    assert!(ran < 100, "{ran} GETs ran with their replies unread");
    assert!(grown < 64 << 10, "the server grew by {grown} KiB");
}

#[test]
fn sigterm_stops_serving_a_client_that_never_stops_sending() {
    // A client that pipelines PINGs without pause and reads the replies.
    // After SIGTERM the server must stop reading it at once and exit; inline
    // checked its socket before the shutdown signal and served it on until
    // the drain timeout (240 MB of replies in 8 s), then reset it.
    for arch in ["lb", "inline", "thread-per-conn"] {
        let (mut srv, addr) = spawn_server(&["--arch", arch, "--drain-timeout", "60s"]);
        let mut raw = Raw::connect(addr);
        let mut writer = raw.stream.try_clone().unwrap();
        let batch: Vec<u8> = (1..100)
            .flat_map(|id| {
                frame(&Request {
                    id,
                    op: Some(Op::Ping(pb::Ping::default())),
                })
            })
            .collect();
        let sending = std::thread::spawn(move || while writer.write_all(&batch).is_ok() {});
        // The event: replies are flowing.
        assert!(raw.recv().is_some(), "{arch}: no reply");
        let mut reader = raw.stream.try_clone().unwrap();
        // Small reads keep the server's writes waiting, so its input is
        // always ready when it looks again (how the bug showed).
        let reading = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 10];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        let term = Instant::now();
        srv.sigterm();
        srv.0.wait().unwrap();
        let took = term.elapsed();
        assert!(
            took < HANG_GUARD / 2,
            "{arch}: served on for {took:?} after SIGTERM"
        );
        let _ = raw.stream.shutdown(std::net::Shutdown::Both);
        sending.join().unwrap();
        reading.join().unwrap();
    }
}
