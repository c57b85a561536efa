//! How a connection behaves at its edges, in every architecture: no reply is
//! lost when the server closes, the frame timeout runs from a frame's first
//! byte, and the protocol's small print holds.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{HANG_GUARD, Raw, architectures, frame, server};
use ramkv_proto::{self as pb, Request, Status, request::Op};

fn ping(id: u64) -> Vec<u8> {
    frame(&Request {
        id,
        op: Some(Op::Ping(pb::Ping::default())),
    })
}

/// Reads replies until the server closes: `Ok(ids)` if it closed with a FIN,
/// `Err` if the connection was reset (replies may have been discarded).
fn replies_then_close(raw: &mut Raw) -> Result<Vec<(u64, i32)>, std::io::Error> {
    let mut got = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match raw.stream.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(got),
            Err(e) => return Err(e),
        }
        let mut body = vec![0u8; u32::from_be_bytes(h) as usize];
        raw.stream.read_exact(&mut body)?;
        let r = <pb::Response as prost::Message>::decode(&body[..]).expect("decodes");
        got.push((r.id, r.status));
    }
}

/// GETs of a 64 KiB value, so that the replies (3.2 MB for 50) outgrow the
/// socket buffers: a server that closes with unread input sends a reset,
/// and the reset throws away the replies still in its send queue.
fn big_gets(raw: &mut Raw, n: u64) -> Vec<u8> {
    raw.send(
        1_000_000,
        Op::Put(pb::Put {
            key: "big".into(),
            value: Bytes::from(vec![b'v'; 64 << 10]),
            expected_version: None,
        }),
    );
    assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    (1..=n)
        .flat_map(|id| {
            frame(&Request {
                id,
                op: Some(Op::Get(pb::Get { key: "big".into() })),
            })
        })
        .collect()
}

#[test]
fn after_an_oversize_frame_every_earlier_reply_arrives_before_a_clean_close() {
    // 50 large GETs, a length prefix over the limit, then the client keeps
    // sending. The server must answer the 50, say TOO_LARGE, and close with
    // a FIN. Closing with the client's bytes unread resets the connection,
    // and the reset discards replies not yet delivered (0 or 1 of 100
    // arrived, before).
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.max_frame = 128 << 10;
            c.max_key = 64;
            c.max_value = 100 << 10;
        });
        let mut raw = Raw::connect(srv.local_addr());
        let mut burst = big_gets(&mut raw, 50);
        burst.extend_from_slice(&(1u32 << 20).to_be_bytes());
        raw.send_bytes(&burst);
        let mut more = raw.stream.try_clone().unwrap();
        let garbage = std::thread::spawn(move || {
            for _ in 0..64 {
                if more.write_all(&[7u8; 1024]).is_err() {
                    return;
                }
            }
        });
        let got = replies_then_close(&mut raw).unwrap_or_else(|e| panic!("{name}: reset: {e}"));
        garbage.join().unwrap();
        let gets = got
            .iter()
            .filter(|(id, s)| *id > 0 && *s == Status::Ok as i32)
            .count();
        assert_eq!(gets, 50, "{name}: {gets} of 50 replies");
        assert!(
            got.contains(&(0, Status::TooLarge as i32)),
            "{name}: {got:?}"
        );
        srv.shutdown();
    }
}

#[test]
fn at_shutdown_every_request_read_is_answered_before_a_clean_close() {
    // 200 large GETs read, then shutdown, then one more request from the
    // client: the 200 are answered and the close is a FIN. (Before, the
    // request sent after SIGTERM made the close a reset: 0 of 200 arrived.)
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.max_value = 100 << 10;
        });
        let addr = srv.local_addr();
        let mut raw = Raw::connect(addr);
        let burst = big_gets(&mut raw, 200);
        raw.send_bytes(&burst);
        // The first reply proves the server is reading them.
        let first = raw.recv().expect("a reply");
        assert_eq!(first.status, Status::Ok as i32, "{name}");
        let stopping = std::thread::spawn(move || srv.shutdown());
        // Shutdown has begun once the server refuses new connections.
        let start = Instant::now();
        while TcpStream::connect(addr).is_ok() {
            assert!(
                start.elapsed() < HANG_GUARD,
                "{name}: never stopped accepting"
            );
            std::thread::yield_now();
        }
        raw.send_bytes(&ping(999));
        let got = replies_then_close(&mut raw).unwrap_or_else(|e| panic!("{name}: reset: {e}"));
        let answered = got.iter().filter(|(id, _)| (2..=200).contains(id)).count();
        assert_eq!(answered, 199, "{name}: {answered} of the other 199 replies");
        stopping.join().unwrap();
    }
}

#[test]
fn a_length_prefix_followed_by_silence_is_timed_out() {
    // The frame has begun at its first byte: 4 bytes of header and nothing
    // more is an unfinished frame, not an idle connection (before, only the
    // 300 s idle timeout ended it).
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.frame_timeout = Duration::from_millis(300);
        });
        let mut raw = Raw::connect(srv.local_addr());
        raw.send_bytes(&100u32.to_be_bytes());
        let r = raw.recv().expect("the timeout's answer");
        assert_eq!(
            (r.id, r.status),
            (0, Status::InvalidRequest as i32),
            "{name}"
        );
        assert!(
            r.message.contains("incomplete frame"),
            "{name}: {}",
            r.message
        );
        assert!(raw.recv().is_none(), "{name}: then the close");
        srv.shutdown();
    }
}

#[test]
fn a_partial_frame_left_behind_a_paused_batch_is_timed_out() {
    // Four requests and two bytes of a fifth arrive at once, with at most
    // two in flight: admission pauses after each pair, resumes after each
    // write, and after the second pair only the two bytes are left. Their
    // frame timeout must start once admission resumes, though no more input
    // comes (a driver that only re-admits after a write when a whole frame
    // is buffered left them with no deadline at all).
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.max_in_flight = 2;
            c.limits.frame_timeout = Duration::from_millis(300);
        });
        let mut raw = Raw::connect(srv.local_addr());
        let mut bytes: Vec<u8> = (1..=4).flat_map(ping).collect();
        bytes.extend_from_slice(&[0, 0]);
        raw.send_bytes(&bytes);
        let ids: Vec<u64> = (0..4).filter_map(|_| raw.recv().map(|r| r.id)).collect();
        assert_eq!(ids, [1, 2, 3, 4], "{name}");
        let r = raw.recv().expect("the timeout's answer");
        assert_eq!(
            (r.id, r.status),
            (0, Status::InvalidRequest as i32),
            "{name}: {r:?}"
        );
        assert!(raw.recv().is_none(), "{name}: then the close");
        srv.shutdown();
    }
}

#[test]
fn a_frame_dribbled_byte_by_byte_is_cut_off_at_the_timeout() {
    // A slowloris sends one byte every 100 ms: the clock runs from the
    // first byte and later bytes do not restart it, so with a 500 ms frame
    // timeout the 30-byte frame (3 s of dribbling) never completes (before,
    // thread-per-conn served such a client after 25 s).
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.frame_timeout = Duration::from_millis(500);
        });
        let mut raw = Raw::connect(srv.local_addr());
        let frame = frame(&Request {
            id: 5,
            op: Some(Op::Ping(pb::Ping {
                payload: Bytes::from_static(b"0123456789abcdefghijkl"),
            })),
        });
        let mut writer = raw.stream.try_clone().unwrap();
        let dribble = std::thread::spawn(move || {
            for b in frame {
                if writer.write_all(&[b]).is_err() {
                    return;
                }
                // The client's pace, not a synchronisation.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = raw.recv().expect("an answer");
        assert_eq!(
            (r.id, r.status),
            (0, Status::InvalidRequest as i32),
            "{name}: {r:?}"
        );
        dribble.join().unwrap();
        srv.shutdown();
    }
}

#[test]
fn multi_get_counts_the_reply_it_would_send_exactly() {
    // 2,729 missing keys make a 5.4 KB reply, well under a 64 KiB frame;
    // the old estimate of 24 bytes per item refused it as TOO_LARGE.
    let srv = server(|c| {
        c.limits.max_frame = 64 << 10;
        c.max_value = 32 << 10;
    });
    let keys: Vec<Bytes> = (0..2729).map(|i| Bytes::from(format!("k{i:08}"))).collect();
    let mut raw = Raw::connect(srv.local_addr());
    raw.send(1, Op::MultiGet(pb::MultiGet { keys }));
    let r = raw.recv().unwrap();
    assert_eq!(r.status, Status::Ok as i32, "{}", r.message);
    // And a reply that really is too large is still refused.
    let big = Bytes::from(vec![b'v'; 30 << 10]);
    for k in ["a", "b", "c"] {
        raw.send(
            2,
            Op::Put(pb::Put {
                key: k.into(),
                value: big.clone(),
                expected_version: None,
            }),
        );
        assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    }
    let keys = vec!["a".into(), "b".into(), "c".into()];
    raw.send(3, Op::MultiGet(pb::MultiGet { keys }));
    assert_eq!(raw.recv().unwrap().status, Status::TooLarge as i32);
    srv.shutdown();
}

#[test]
fn before_authentication_an_undecodable_frame_is_refused_and_closes() {
    let dir = std::env::temp_dir().join(format!("ramkv-conn-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "s3cret").unwrap();
    for (name, adjust) in architectures() {
        let token = dir.join("token");
        let srv = server(|c| {
            adjust(c);
            c.auth_token_file = Some(token);
        });
        let mut raw = Raw::connect(srv.local_addr());
        raw.send_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        let r = raw.recv().expect("an answer");
        assert_eq!(
            r.status,
            Status::Unauthenticated as i32,
            "{name}: {}",
            r.message
        );
        assert!(raw.recv().is_none(), "{name}: then the close");
        srv.shutdown();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_request_longer_than_the_idle_timeout_leaves_its_connection_open() {
    // The idle clock restarts when a reply goes out. inline and
    // thread-per-conn stamped it with the time the request was read, so a
    // request longer than the idle timeout closed its connection right after
    // its reply, and the next request was lost.
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.enable_spin_op = true;
            c.spin_op_max_us = 10_000_000;
            c.limits.idle_timeout = Duration::from_millis(300);
        });
        let mut raw = Raw::connect(srv.local_addr());
        raw.send(
            1,
            Op::Spin(pb::Spin {
                nanos: 600_000_000,
                sleep: true,
            }),
        );
        assert_eq!(raw.recv().unwrap().status, Status::Ok as i32, "{name}");
        raw.send_bytes(&ping(2));
        let pong = raw.recv();
        assert!(
            pong.as_ref().is_some_and(|r| r.id == 2),
            "{name}: closed after the long request's reply ({pong:?})"
        );
        drop(raw);
        srv.shutdown();
    }
}

#[test]
fn a_reply_written_slower_than_the_idle_timeout_leaves_its_connection_open() {
    // The idle clock restarts when a reply has gone out, not when it was
    // taken for writing. A 16 MiB reply to a client that reads nothing for
    // 900 ms (more than kernel buffers hold) takes that long to write; the
    // client then reads it and at once sends another request, which must be
    // answered. Stamped before the write, the idle deadline (300 ms) had
    // passed when the write ended, and the connection was closed.
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.idle_timeout = Duration::from_millis(300);
            c.limits.max_frame = 32 << 20;
            c.limits.max_outbound = 32 << 20;
        });
        let mut raw = Raw::connect(srv.local_addr());
        let payload = vec![7u8; 16 << 20].into();
        raw.send(1, Op::Ping(pb::Ping { payload }));
        // The slow reader: this pause is the scenario, not a synchronisation.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(raw.recv().map(|r| r.id), Some(1), "{name}");
        raw.send_bytes(&ping(2));
        let pong = raw.recv();
        assert!(
            pong.as_ref().is_some_and(|r| r.id == 2),
            "{name}: closed right after a slow write ({pong:?})"
        );
        drop(raw);
        srv.shutdown();
    }
}

#[test]
fn a_connection_refused_at_the_limit_reads_its_refusal_then_a_clean_close() {
    // The refused client has already sent a request. Closing with that
    // input unread made the kernel send a reset, which could destroy the
    // refusal before the client read it; the server now half-closes and
    // drains first, as it does for every close.
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.limits.max_connections = 1;
        });
        let mut first = Raw::connect(srv.local_addr());
        first.send_bytes(&ping(1));
        assert_eq!(first.recv().map(|r| r.id), Some(1), "{name}");
        let mut refused = Raw::connect(srv.local_addr());
        refused.send_bytes(&ping(2));
        let got = replies_then_close(&mut refused);
        assert!(
            matches!(&got, Ok(r) if r[..] == [(0, Status::Overloaded as i32)]),
            "{name}: {got:?}"
        );
        drop((first, refused));
        srv.shutdown();
    }
}
