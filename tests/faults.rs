//! Bad input, vanishing clients, connection limits and graceful shutdown:
//! the server answers or closes cleanly, never panics or hangs, and keeps
//! serving everyone else.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::process::Command;

use common::{Raw, frame, server};
use ramkv_proto::{self as pb, request::Op};
use ramkv_proto::{Request, Status};

fn ping_ok(raw: &mut Raw, id: u64) {
    raw.send(id, Op::Ping(pb::Ping::default()));
    let r = raw.recv().expect("reply");
    assert_eq!((r.id, r.status), (id, Status::Ok as i32), "{}", r.message);
}

#[test]
fn undecodable_protobuf_gets_invalid_request_and_the_connection_goes_on() {
    let srv = server(|_| {});
    let mut raw = Raw::connect(srv.local_addr());
    // Intact framing, garbage inside: a truncated field after a readable id.
    let body = [0x08, 42, 0x12, 0x7f, 0x01];
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    raw.send_bytes(&bytes);
    let r = raw.recv().unwrap();
    assert_eq!((r.id, r.status), (42, Status::InvalidRequest as i32));
    assert!(r.message.contains("does not decode"), "{}", r.message);
    // Pure noise, id unreadable: id 0.
    raw.send_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let r = raw.recv().unwrap();
    assert_eq!((r.id, r.status), (0, Status::InvalidRequest as i32));
    ping_ok(&mut raw, 7);
    srv.shutdown();
}

#[test]
fn oversize_length_prefix_gets_an_error_then_the_connection_closes() {
    for arch in [
        ramkv::Arch::Lb,
        ramkv::Arch::Inline,
        ramkv::Arch::ThreadPerConn,
    ] {
        let srv = server(|c| {
            c.arch = arch;
            c.limits.max_frame = 1024;
            c.max_key = 64;
            c.max_value = 512;
        });
        let mut raw = Raw::connect(srv.local_addr());
        raw.send_bytes(&[0x00, 0x10, 0x00, 0x00, 1, 2, 3]);
        let r = raw.recv().expect("an error frame before the close");
        assert_eq!(r.status, Status::TooLarge as i32, "{arch:?}");
        assert!(r.message.contains("1024"), "{}", r.message);
        assert!(raw.recv().is_none(), "{arch:?}: connection must close");
        ping_ok(&mut Raw::connect(srv.local_addr()), 1);
        srv.shutdown();
    }
}

#[test]
fn truncated_frame_then_close_is_handled() {
    let srv = server(|_| {});
    let mut raw = Raw::connect(srv.local_addr());
    // One complete request, then half of another, then end of stream.
    let mut bytes = frame(&Request {
        id: 5,
        op: Some(Op::Ping(pb::Ping::default())),
    });
    let second = frame(&Request {
        id: 6,
        op: Some(Op::Ping(pb::Ping {
            payload: vec![9; 100].into(),
        })),
    });
    bytes.extend_from_slice(&second[..50]);
    raw.send_bytes(&bytes);
    raw.stream.shutdown(Shutdown::Write).unwrap();
    // The complete request is answered, then the server closes its side.
    assert_eq!(raw.recv().unwrap().id, 5);
    assert!(raw.recv().is_none());
    ping_ok(&mut Raw::connect(srv.local_addr()), 1);
    srv.shutdown();
}

#[test]
fn clients_that_vanish_with_requests_in_flight_do_not_hurt_others() {
    let srv = server(|c| {
        c.workers = Some(1);
        c.enable_spin_op = true;
    });
    let mut survivor = Raw::connect(srv.local_addr());
    // An acknowledged put, to read back after the faults.
    survivor.send(
        1,
        Op::Put(pb::Put {
            key: "kept".into(),
            value: "safe".into(),
            expected_version: None,
        }),
    );
    let acked = survivor.recv().unwrap();
    assert_eq!(acked.status, Status::Ok as i32);
    for round in 0..20 {
        let mut raw = Raw::connect(srv.local_addr());
        let mut burst = Vec::new();
        for id in 0..50 {
            burst.extend(frame(&Request {
                id,
                op: Some(Op::Spin(pb::Spin {
                    nanos: 20_000,
                    sleep: false,
                })),
            }));
        }
        // ...and puts that may or may not land before the client vanishes.
        burst.extend(frame(&Request {
            id: 99,
            op: Some(Op::Put(pb::Put {
                key: "kept".into(),
                value: "overwritten?".into(),
                expected_version: Some(0),
            })),
        }));
        raw.send_bytes(&burst);
        drop(raw); // gone, with up to 50 requests in flight
        ping_ok(&mut survivor, round);
    }
    // Replies to the vanished clients were dropped, not written anywhere:
    // the survivor sees only its own.
    ping_ok(&mut survivor, 1000);
    // The acknowledged put is intact (the vanished clients' create-only
    // puts could not replace it).
    survivor.send(2, Op::Get(pb::Get { key: "kept".into() }));
    let r = survivor.recv().unwrap();
    let Some(pb::response::Result::Get(g)) = r.result else {
        panic!("{r:?}")
    };
    let Some(pb::response::Result::Put(p)) = acked.result else {
        panic!()
    };
    assert_eq!((&g.value[..], g.version), (&b"safe"[..], p.version));
    srv.shutdown();
}

#[test]
fn connections_past_the_limit_get_an_error_frame() {
    for arch in [ramkv::Arch::Lb, ramkv::Arch::ThreadPerConn] {
        let srv = server(|c| {
            c.arch = arch;
            c.limits.max_connections = 2;
        });
        let mut a = Raw::connect(srv.local_addr());
        let mut b = Raw::connect(srv.local_addr());
        ping_ok(&mut a, 1);
        ping_ok(&mut b, 1);
        let mut c = Raw::connect(srv.local_addr());
        let r = c.recv().expect("error frame");
        assert_eq!(r.status, Status::Overloaded as i32, "{arch:?}");
        assert!(r.message.contains("too many connections"), "{}", r.message);
        assert!(c.recv().is_none());
        // Closing one makes room again.
        drop(a);
        ping_ok(&mut b, 2);
        srv.shutdown();
    }
}

#[test]
fn random_byte_streams_never_take_the_server_down() {
    use rand::{Rng, SeedableRng};
    let srv = server(|c| {
        c.limits.max_frame = 4096;
        c.max_key = 64;
        c.max_value = 2048;
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut raw = Raw::connect(srv.local_addr());
        let len = rng.random_range(1..300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Often a plausible small length prefix, so bodies reach the decoder.
        if rng.random_bool(0.7) {
            let body = (len as u32).saturating_sub(4).min(rng.random_range(0..64));
            bytes[..4.min(len)].copy_from_slice(&body.to_be_bytes()[..4.min(len)]);
        }
        raw.send_bytes(&bytes);
        // The server may already have closed (an oversize length prefix).
        let _ = raw.stream.shutdown(Shutdown::Write);
        // Whatever comes back must be well-formed frames, then a clean close.
        while raw.recv().is_some() {}
    }
    ping_ok(&mut Raw::connect(srv.local_addr()), 1);
    srv.shutdown();
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let (mut child, addr) = common::spawn_server(&[
        "--workers",
        "1",
        "--enable-spin-op",
        "--spin-op-max-us",
        "100000",
    ]);

    // Ten 100 ms requests in one write; one worker runs them one by one.
    let mut raw = Raw::connect(addr);
    let mut burst = Vec::new();
    for id in 1..=10 {
        burst.extend(frame(&Request {
            id,
            op: Some(Op::Spin(pb::Spin {
                nanos: 100_000_000,
                sleep: false,
            })),
        }));
    }
    raw.stream.write_all(&burst).unwrap();
    // The first reply proves the server has read the burst; nine remain in flight.
    assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    child.sigterm();
    let mut answered = 1;
    while let Some(r) = raw.recv() {
        assert_eq!(r.status, Status::Ok as i32);
        answered += 1;
    }
    assert_eq!(
        answered, 10,
        "every request in flight is answered before the close"
    );
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn server_answers_help_and_refuses_nonsense_flags() {
    let bin = env!("CARGO_BIN_EXE_ramkv-server");
    let out = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--reuseport") && help.contains("--arch"));
    let out = Command::new(bin)
        .args(["--arch", "thread-per-conn", "--reuseport"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("thread-per-conn"));
}

#[test]
fn a_signal_interrupting_a_thread_per_conn_read_does_not_drop_the_connection() {
    // Attaching a tracer interrupts every blocked read. A read with a
    // timeout then fails with EINTR instead of restarting, and
    // thread-per-conn used to take that for a broken connection.
    let (srv, addr) = common::spawn_server(&["--arch", "thread-per-conn"]);
    let mut raw = Raw::connect(addr);
    ping_ok(&mut raw, 1);
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", srv.0.id()))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut strace = std::process::Command::new("strace");
    strace.args(["-q", "-o", "/dev/null"]);
    for t in &tids {
        strace.args(["-p", t]);
    }
    let mut tracer = strace
        .spawn()
        .expect("strace runs (scripts/test installs it)");
    // Wait until every thread is traced: attaching interrupts its read.
    let traced = |tid: &String| {
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", srv.0.id())).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        })
    };
    let start = std::time::Instant::now();
    while !tids.iter().all(traced) {
        assert!(
            start.elapsed() < common::HANG_GUARD,
            "strace never attached"
        );
        std::thread::yield_now();
    }
    ping_ok(&mut raw, 2);
    let _ = tracer.kill();
    let _ = tracer.wait();
    ping_ok(&mut raw, 3);
}
