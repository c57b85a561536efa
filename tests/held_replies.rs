//! A reply that is ready goes out before a long request that arrived in the
//! same read starts, in every architecture. A thread that runs requests
//! itself (inline, thread-per-conn) used to run everything it had read, then
//! write every reply at once, so a PING's answer waited for the slow request
//! behind it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ramkv::{Admission, Arch, EncodeError, ExecContext, Rejection, Server, ServerBuilder, Service};

/// Requests are one byte: `p` answers at once (quick); `1`, `2` and `3`
/// wait until the test opens that gate. The answer is the request's byte.
#[derive(Default)]
struct Gates {
    open: Mutex<[bool; 4]>,
    opened: Condvar,
}

impl Gates {
    fn open(&self, gate: usize) {
        self.open.lock().unwrap()[gate] = true;
        self.opened.notify_all();
    }
}

impl Service for Gates {
    type Request = u8;
    type Response = u8;
    type Session = ();
    type Tag = ();

    fn admit(&self, frame: Bytes, _: &mut ()) -> Admission<Self> {
        match &frame[..] {
            [op @ (b'p' | b'1' | b'2' | b'3')] => Admission::Run {
                request: *op,
                tag: (),
                reply_bound: 5,
            },
            _ => Admission::ReplyThenClose(b'?'),
        }
    }

    fn execute(&self, op: u8, _: &ExecContext<'_>) -> u8 {
        if op != b'p' {
            let gate = (op - b'0') as usize;
            let mut open = self.open.lock().unwrap();
            while !open[gate] {
                open = self.opened.wait(open).unwrap();
            }
        }
        op
    }

    fn is_quick(&self, op: &u8) -> bool {
        *op == b'p'
    }

    fn encode(op: &u8, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u32(1);
        out.put_u8(*op);
        Ok(())
    }

    fn reject(_: Option<()>, _: &Rejection) -> u8 {
        b'!'
    }

    fn figures(&self, _: &mut Vec<(String, u64)>) {}
}

fn start(arch: &str, gates: Gates) -> Server<Gates> {
    let b = ServerBuilder::new(gates).listen("127.0.0.1:0").pin(false);
    let b = match arch {
        "lb" => b.workers(2),
        "inline" => b.arch(Arch::Inline),
        "inline x2" => b.arch(Arch::Inline).dispatchers(2),
        "thread-per-conn" => b.arch(Arch::ThreadPerConn),
        _ => unreachable!(),
    };
    b.start().unwrap()
}

/// Reads one answer. The timeout only keeps a regression from hanging the
/// suite: the answer comes before the test opens any gate, or never.
fn answer(s: &mut TcpStream) -> u8 {
    let mut f = [0u8; 5];
    s.read_exact(&mut f)
        .expect("a reply that was ready was held back behind a waiting request");
    assert_eq!(&f[..4], &[0, 0, 0, 1]);
    f[4]
}

fn send(s: &mut TcpStream, ops: &[u8]) {
    let bytes: Vec<u8> = ops.iter().flat_map(|&op| [0, 0, 0, 1, op]).collect();
    s.write_all(&bytes).unwrap();
}

#[test]
fn a_ready_reply_is_not_held_behind_a_waiting_request_of_the_same_read() {
    for arch in ["lb", "inline", "inline x2", "thread-per-conn"] {
        let srv = start(arch, Gates::default());
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // A quick request, then a slow one, in one write: the quick one's
        // answer arrives while the slow one waits.
        send(&mut s, b"p1");
        assert_eq!(answer(&mut s), b'p', "{arch}");
        srv.service().open(1);
        assert_eq!(answer(&mut s), b'1', "{arch}");
        // Two slow ones: the first one's answer does not wait for the second.
        send(&mut s, b"23");
        srv.service().open(2);
        assert_eq!(answer(&mut s), b'2', "{arch}");
        srv.service().open(3);
        assert_eq!(answer(&mut s), b'3', "{arch}");
        drop(s);
        srv.shutdown();
    }
}
