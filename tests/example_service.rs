//! The example counter service (`examples/counter/`) on the same runtime
//! under every architecture, over real sockets: the runtime serves a service
//! it knows nothing about, with its own protocol.

#[path = "../examples/counter/service.rs"]
mod counter;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use counter::{BODY_LEN, Counters, Status};
use ramkv::{Arch, Server, ServerBuilder};

fn start(name: &str) -> Server<Counters> {
    let builder = ServerBuilder::new(Counters::new(8))
        .listen("127.0.0.1:0")
        .pin(false);
    let builder = match name {
        "lb" => builder.workers(2),
        "inline x2" => builder.arch(Arch::Inline).dispatchers(2),
        "inline reuseport x2" => builder.arch(Arch::Inline).dispatchers(2).reuseport(true),
        "thread-per-conn" => builder.arch(Arch::ThreadPerConn),
        _ => unreachable!(),
    };
    builder.start().unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn request(id: u64, op: u8, counter: u64) -> Vec<u8> {
    let mut f = (BODY_LEN as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&id.to_be_bytes());
    f.push(op);
    f.extend_from_slice(&counter.to_be_bytes());
    f
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Reads one response: (id, status, value).
fn response(s: &mut TcpStream) -> (u64, u8, u64) {
    let mut f = [0u8; 4 + BODY_LEN];
    s.read_exact(&mut f).expect("a response");
    assert_eq!(
        u32::from_be_bytes(f[..4].try_into().unwrap()),
        BODY_LEN as u32
    );
    let id = u64::from_be_bytes(f[4..12].try_into().unwrap());
    let value = u64::from_be_bytes(f[13..21].try_into().unwrap());
    (id, f[12], value)
}

fn connect(srv: &Server<Counters>) -> TcpStream {
    let s = TcpStream::connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

#[test]
fn the_counter_service_runs_under_every_architecture() {
    for name in ["lb", "inline x2", "inline reuseport x2", "thread-per-conn"] {
        let srv = start(name);
        // Two connections pipeline 500 increments of counter 3 each.
        let mut conns = [connect(&srv), connect(&srv)];
        for (c, s) in conns.iter_mut().enumerate() {
            let burst: Vec<u8> = (0..500)
                .flat_map(|i| request(c as u64 * 1000 + i, 1, 3))
                .collect();
            s.write_all(&burst).unwrap();
        }
        let mut seen = Vec::new();
        for (c, s) in conns.iter_mut().enumerate() {
            let mut ids = Vec::new();
            for _ in 0..500 {
                let (id, status, value) = response(s);
                assert_eq!(status, Status::Ok as u8, "{name}");
                ids.push(id);
                seen.push(value);
            }
            ids.sort_unstable();
            let sent: Vec<u64> = (0..500).map(|i| c as u64 * 1000 + i).collect();
            assert_eq!(ids, sent, "{name}: every request answered once");
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=1000).collect::<Vec<_>>(),
            "{name}: no increment lost"
        );
        let s = &mut conns[0];
        s.write_all(&request(7, 0, 3)).unwrap();
        assert_eq!(response(s), (7, Status::Ok as u8, 1000), "{name}");
        // Bad requests are answered, and the connection goes on.
        s.write_all(&request(8, 0, 99)).unwrap();
        assert_eq!(response(s), (8, Status::BadRequest as u8, 0), "{name}");
        s.write_all(&framed(&9u64.to_be_bytes())).unwrap();
        assert_eq!(response(s), (9, Status::BadRequest as u8, 0), "{name}");
        s.write_all(&request(10, 2, 0)).unwrap();
        assert_eq!(response(s), (10, Status::BadRequest as u8, 0), "{name}");
        let figures = srv.figures();
        let bad = figures
            .iter()
            .find(|(n, _)| n == "counter_bad_requests_total")
            .map(|(_, v)| *v);
        assert_eq!(
            bad,
            Some(3),
            "{name}: the service's own figures are reported"
        );
        drop(conns); // else shutdown lingers for their close
        srv.shutdown();
    }
}

#[test]
fn the_runtime_answers_for_the_service_when_a_frame_is_too_large() {
    let srv = start("lb");
    let mut s = connect(&srv);
    s.write_all(&(u32::MAX).to_be_bytes()).unwrap();
    assert_eq!(response(&mut s), (0, Status::Closing as u8, 0));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then the connection closes");
    drop(s);
    srv.shutdown();
}
