//! Test harness: in-process servers on 127.0.0.1:0 and a raw-frame client
//! for sending exactly the bytes a test needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use prost::Message;
use ramkv::kv::{KvOptions, KvService};
use ramkv::{Arch, Limits, Server, ServerBuilder, WorkerPolicy};
use ramkv_proto::request::Op;
use ramkv_proto::{Request, Response};

/// Upper bound on any single wait, so a broken server fails a test instead
/// of hanging it. Never used to wait *for* something to happen.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A test server's settings, named as ramkv-server's flags are. `server`
/// maps them onto the library's builder.
pub struct Setup {
    /// Where to listen; a free loopback port when `None`.
    pub listen: Option<String>,
    pub arch: Arch,
    pub dispatchers: usize,
    pub reuseport: bool,
    pub workers: Option<usize>,
    pub spin_us: Option<u64>,
    pub worker_policy: WorkerPolicy,
    pub quick_path: bool,
    pub limits: Limits,
    pub max_key: u64,
    pub max_value: u64,
    pub max_memory: u64,
    pub enable_spin_op: bool,
    pub spin_op_max_us: u64,
    pub auth_token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub admin: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        let kv = KvOptions::default();
        Setup {
            listen: None,
            arch: Arch::Lb,
            dispatchers: 1,
            reuseport: false,
            workers: None,
            spin_us: None,
            worker_policy: WorkerPolicy::Auto,
            quick_path: true,
            // Short: a test client that never closes its side would otherwise
            // hold every shutdown for the default 2 s linger.
            limits: Limits {
                linger: Duration::from_millis(300),
                ..Limits::default()
            },
            max_key: kv.max_key as u64,
            max_value: kv.max_value as u64,
            max_memory: kv.max_memory,
            enable_spin_op: false,
            spin_op_max_us: 10_000,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            admin: None,
        }
    }
}

impl Setup {
    /// The builder for these settings: a loopback port, unpinned threads.
    pub fn builder(self) -> Result<ServerBuilder<KvService>, String> {
        let kv = KvService::new(KvOptions {
            max_key: self.max_key as usize,
            max_value: self.max_value as usize,
            max_reply: self.limits.max_frame,
            max_memory: self.max_memory,
            max_spin: self
                .enable_spin_op
                .then(|| Duration::from_micros(self.spin_op_max_us)),
            auth_token_file: self.auth_token_file,
        })
        .map_err(|e| e.to_string())?;
        let mut b = ServerBuilder::new(kv)
            .listen(self.listen.unwrap_or_else(|| "127.0.0.1:0".into()))
            .pin(false)
            .arch(self.arch)
            .dispatchers(self.dispatchers)
            .reuseport(self.reuseport)
            .worker_policy(self.worker_policy)
            .quick_path(self.quick_path)
            .limits(self.limits);
        if let Some(w) = self.workers {
            b = b.workers(w);
        }
        if let Some(us) = self.spin_us {
            b = b.spin(Duration::from_micros(us));
        }
        if let (Some(c), Some(k)) = (self.tls_cert, self.tls_key) {
            b = b.tls(c, k);
        }
        if let Some(a) = self.admin {
            b = b.admin(a);
        }
        Ok(b)
    }
}

/// Starts a server with test defaults adjusted by `adjust`.
pub fn server(adjust: impl FnOnce(&mut Setup)) -> Server<KvService> {
    let mut setup = Setup::default();
    adjust(&mut setup);
    setup
        .builder()
        .expect("valid setup")
        .start()
        .expect("server starts")
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

impl ServerProcess {
    /// Sends the server SIGTERM, as an operator stopping it would.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill failed");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server binary on an ephemeral loopback port with `args`, and
/// returns once it has printed the address it listens on.
pub fn spawn_server(args: &[&str]) -> (ServerProcess, SocketAddr) {
    spawn_server_under(&[], args)
}

/// [`spawn_server`] run under `wrapper`, a command that runs the one after
/// it (for example `["prlimit", "--nofile=40", "--"]`).
pub fn spawn_server_under(wrapper: &[&str], args: &[&str]) -> (ServerProcess, SocketAddr) {
    let server = env!("CARGO_BIN_EXE_ramkv-server");
    let (program, wrapper_args) = match wrapper.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (server, &[][..]),
    };
    let mut child = Command::new(program)
        .args(wrapper_args)
        .args(if wrapper.is_empty() {
            None
        } else {
            Some(server)
        })
        .args(["--listen", "127.0.0.1:0", "--no-pin"])
        .args(if args.contains(&"--log-level") {
            &[][..]
        } else {
            &["--log-level", "warn"]
        })
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.split_whitespace().nth(3) else {
        // It exited instead: say why (its error went to stderr, inherited).
        let status = child.wait().unwrap();
        panic!("ramkv-server {args:?} did not start ({status}); its error is above");
    };
    (ServerProcess(child), addr.parse().unwrap())
}

/// Adjusts a test setup into one architecture.
pub type Adjust = Box<dyn Fn(&mut Setup)>;

/// Each architecture as the command line would configure it.
pub fn architectures() -> Vec<(&'static str, Adjust)> {
    vec![
        (
            "lb, 1 dispatcher, 2 workers",
            Box::new(|c| c.workers = Some(2)),
        ),
        ("lb, 1 worker", Box::new(|c| c.workers = Some(1))),
        (
            // Spinning is off by default when threads outnumber cores, as on
            // CI; this runs the spin-window hand-off through real sockets.
            "lb, 2 workers spinning 100 µs",
            Box::new(|c| {
                c.workers = Some(2);
                c.spin_us = Some(100);
            }),
        ),
        (
            "lb, reuseport x3, 3 workers",
            Box::new(|c| {
                c.dispatchers = 3;
                c.reuseport = true;
                c.workers = Some(3);
            }),
        ),
        (
            "lb, 2 dispatchers handed off",
            Box::new(|c| c.dispatchers = 2),
        ),
        (
            "inline single-threaded",
            Box::new(|c| c.arch = Arch::Inline),
        ),
        (
            "inline, 3 acceptors on a shared socket",
            Box::new(|c| {
                c.arch = Arch::Inline;
                c.dispatchers = 3;
            }),
        ),
        (
            "inline, reuseport x2",
            Box::new(|c| {
                c.arch = Arch::Inline;
                c.dispatchers = 2;
                c.reuseport = true;
            }),
        ),
        (
            "thread-per-conn",
            Box::new(|c| c.arch = Arch::ThreadPerConn),
        ),
    ]
}
