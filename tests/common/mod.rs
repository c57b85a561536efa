//! Test harness: in-process servers on 127.0.0.1:0 and a raw-frame client
//! for sending exactly the bytes a test needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use prost::Message;
use ramkv::wire::pb::request::Op;
use ramkv::wire::{Request, Response};
use ramkv::{Config, ServerHandle};

/// Upper bound on any single wait, so a broken server fails a test instead
/// of hanging it. Never used to wait *for* something to happen.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Starts a server with test defaults adjusted by `adjust`.
pub fn server(adjust: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg = Config::for_tests();
    adjust(&mut cfg);
    ramkv::start(&cfg).expect("server starts")
}

/// A blocking connection that speaks raw frames.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    /// Sends one request frame.
    pub fn send(&mut self, id: u64, op: Op) {
        self.send_bytes(&frame(&Request { id, op: Some(op) }));
    }

    /// Sends arbitrary bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one response frame, or `None` at a clean end of stream.
    pub fn recv(&mut self) -> Option<Response> {
        let mut header = [0u8; 4];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).expect("frame body");
        Some(Response::decode(&body[..]).expect("response decodes"))
    }
}

/// Encodes a message as one frame.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut buf).unwrap();
    buf.to_vec()
}

/// Looks up one STATS figure by exact name.
pub fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

/// A `ramkv-server` process, killed if the test ends before it exits.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server binary on an ephemeral loopback port with `args`, and
/// returns once it has printed the address it listens on.
pub fn spawn_server(args: &[&str]) -> (ServerProcess, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramkv-server"))
        .args(["--listen", "127.0.0.1:0", "--no-pin", "--log-level", "warn"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("listening line")
        .parse()
        .unwrap();
    (ServerProcess(child), addr)
}
