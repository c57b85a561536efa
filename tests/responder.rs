//! Every admitted request gets exactly one reply, whatever goes wrong: a
//! handler that panics, an encoder that fails, a panic outside the handler.
//! Checked in every architecture with a service of the test's own, run by
//! the same runtime as the key-value service.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ramkv::{
    Admission, Arch, EncodeError, ExecContext, Limits, Rejection, Server, ServerBuilder, Service,
};

/// Frames are an 8-byte id, then a word: `ok`, `panic` (the handler
/// panics), `badenc` (its response cannot be encoded) or `admitpanic` (the
/// panic happens at admission, outside any handler). Replies are the id,
/// then `ok`, or `err: <why>`.
struct Faulty;

struct Req {
    id: u64,
    word: Bytes,
}

impl Service for Faulty {
    type Request = Req;
    type Response = (u64, String);
    type Session = ();
    type Tag = u64;

    fn admit(&self, frame: Bytes, _: &mut ()) -> Admission<Self> {
        let id = frame
            .get(..8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
        let word = frame.slice(8.min(frame.len())..);
        assert!(&word[..] != b"admitpanic", "a bug at admission");
        Admission::Run {
            request: Req { id, word },
            tag: id,
            reply_bound: 64,
        }
    }

    fn execute(&self, r: Req, _: &ExecContext<'_>) -> (u64, String) {
        assert!(&r.word[..] != b"panic", "a bug in the handler");
        let text = if &r.word[..] == b"badenc" {
            "badenc"
        } else {
            "ok"
        };
        (r.id, text.to_string())
    }

    fn encode(r: &(u64, String), out: &mut BytesMut) -> Result<(), EncodeError> {
        if r.1 == "badenc" {
            return Err(EncodeError("this response refuses to be encoded".into()));
        }
        out.put_u32(8 + r.1.len() as u32);
        out.put_u64(r.0);
        out.put_slice(r.1.as_bytes());
        Ok(())
    }

    fn reject(tag: Option<u64>, why: &Rejection) -> (u64, String) {
        (tag.unwrap_or(0), format!("err: {why}"))
    }

    fn figures(&self, _: &mut Vec<(String, u64)>) {}
}

fn start(arch: Arch) -> Server<Faulty> {
    let mut b = ServerBuilder::new(Faulty)
        .listen("127.0.0.1:0")
        .pin(false)
        .arch(arch)
        .limits(Limits {
            drain_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(200),
            ..Limits::default()
        });
    if arch == Arch::Lb {
        b = b.workers(2);
    }
    b.start().expect("starts")
}

fn send(s: &mut TcpStream, id: u64, word: &str) {
    let mut f = Vec::new();
    f.extend_from_slice(&(8 + word.len() as u32).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(word.as_bytes());
    s.write_all(&f).unwrap();
}

fn recv(s: &mut TcpStream) -> Option<(u64, String)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(h) as usize];
    s.read_exact(&mut body).ok()?;
    let id = u64::from_be_bytes(body[..8].try_into().unwrap());
    Some((id, String::from_utf8_lossy(&body[8..]).into_owned()))
}

fn connections_open(srv: &Server<Faulty>) -> u64 {
    srv.figures()
        .iter()
        .find(|(n, _)| n == "ramkv_connections_open")
        .map_or(0, |(_, v)| *v)
}

fn connect(srv: &Server<Faulty>) -> TcpStream {
    let s = TcpStream::connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

#[test]
fn a_panicking_handler_or_a_failing_encoder_still_answers_and_the_connection_goes_on() {
    for arch in [Arch::Lb, Arch::Inline, Arch::ThreadPerConn] {
        let srv = start(arch);
        let mut c = connect(&srv);
        send(&mut c, 1, "panic");
        send(&mut c, 2, "badenc");
        send(&mut c, 3, "ok");
        let mut replies: Vec<(u64, String)> =
            (0..3).map(|_| recv(&mut c).expect("a reply")).collect();
        replies.sort();
        assert_eq!(replies[0].0, 1);
        assert!(
            replies[0].1.contains("internal error"),
            "{arch:?}: {replies:?}"
        );
        assert_eq!(replies[1].0, 2);
        assert!(
            replies[1].1.contains("internal error"),
            "{arch:?}: {replies:?}"
        );
        assert_eq!(replies[2], (3, "ok".to_string()), "{arch:?}");
        // The connection goes on after both.
        send(&mut c, 4, "ok");
        assert_eq!(recv(&mut c), Some((4, "ok".into())), "{arch:?}");
        drop(c);
        await_no_connections(&srv, arch);
        // Nothing is owed, so shutdown does not wait out the 30 s drain timeout.
        let stopping = Instant::now();
        srv.shutdown();
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "{arch:?}: {:?}",
            stopping.elapsed()
        );
    }
}

#[test]
fn a_panic_outside_the_handler_closes_only_its_connection_and_cleans_up() {
    for arch in [Arch::Lb, Arch::Inline, Arch::ThreadPerConn] {
        let srv = start(arch);
        let mut other = connect(&srv);
        let mut c = connect(&srv);
        send(&mut c, 1, "admitpanic");
        assert_eq!(
            recv(&mut c),
            None,
            "{arch:?}: the broken connection is closed"
        );
        // Other connections, and new ones, are served.
        send(&mut other, 2, "ok");
        assert_eq!(recv(&mut other), Some((2, "ok".into())), "{arch:?}");
        let mut fresh = connect(&srv);
        send(&mut fresh, 3, "ok");
        assert_eq!(recv(&mut fresh), Some((3, "ok".into())), "{arch:?}");
        drop((other, fresh));
        await_no_connections(&srv, arch);
        srv.shutdown();
    }
}

/// Waits (polling the server's own gauge; the event is its cleanup) for
/// every connection to be counted closed.
fn await_no_connections(srv: &Server<Faulty>, arch: Arch) {
    let start = Instant::now();
    while connections_open(srv) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{arch:?}: {} connections still counted open",
            connections_open(srv)
        );
        std::thread::yield_now();
    }
}
