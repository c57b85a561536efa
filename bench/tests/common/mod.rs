//! Fixtures shared by ramkv-bench's tests: run configurations, servers that
//! misbehave on purpose, and external servers that are killed at the end.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use ramkv_bench::dist::{KeyDist, SizeDist};
use ramkv_bench::engine::{Mode, RunConfig, Workload};
use ramkv_bench::pacer::Pacing;
use ramkv_bench::protocol::Target;
use ramkv_proto::{Request, Response, Status};

pub fn workload() -> Workload {
    Workload {
        keys: 1000,
        key_dist: KeyDist::Uniform,
        key_size: 16,
        get_ratio: 0.5,
        value_size: SizeDist::Fixed(32),
        hot_conns: None,
        service: None,
        service_sleeps: false,
    }
}

pub fn config(target: &str, mode: Mode, duration: Duration) -> RunConfig {
    RunConfig {
        target: Target::parse(target).unwrap(),
        connections: 2,
        threads: 1,
        mode,
        duration,
        warmup: Duration::from_millis(200),
        drain: Duration::from_secs(5),
        pacing: Pacing::DEFAULT,
        on_time: Duration::from_micros(50),
        progress: false,
        auth_token: None,
        tls: None,
        connect_timeout: Duration::from_secs(2),
        seed: 9,
        admin: None,
        place: Default::default(),
    }
}

pub fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ramkv-bench"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn reply(id: u64) -> BytesMut {
    let resp = Response {
        id,
        status: Status::Ok as i32,
        message: String::new(),
        result: None,
    };
    let mut out = BytesMut::new();
    ramkv_proto::encode_frame(&resp, &mut out).unwrap();
    out
}

/// A ramkv-protocol fixture that answers every request at once, except that
/// it stalls for 200 ms once, at its first request 500 ms or more after its
/// first request (inside the measured window of these 200 ms + 1 s runs).
pub fn stalling_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let stalled = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let (first, stalled) = (first.clone(), stalled.clone());
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut header = [0u8; 4];
                while s.read_exact(&mut header).is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let id = Request::decode(&body[..]).map(|r| r.id).unwrap_or(0);
                    let since_first = first.get_or_init(Instant::now).elapsed();
                    if since_first >= Duration::from_millis(500)
                        && !stalled.swap(true, Ordering::SeqCst)
                    {
                        std::thread::sleep(Duration::from_millis(200)); // the stall under test
                    }
                    if s.write_all(&reply(id)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("ramkv://{addr}")
}

/// A ramkv-protocol fixture that answers `n` requests on each connection,
/// then closes it.
pub fn closing_server(n: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut header = [0u8; 4];
                for _ in 0..n {
                    if s.read_exact(&mut header).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let id = Request::decode(&body[..]).map(|r| r.id).unwrap_or(0);
                    if s.write_all(&reply(id)).is_err() {
                        return;
                    }
                }
                // Read what is in flight, so the close is a FIN, not a reset
                // that could discard the replies just written.
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    format!("ramkv://{addr}")
}

/// A fixture that accepts connections and reads them, but never answers.
pub fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    format!("ramkv://{addr}")
}

/// An external server that is killed when the test ends.
pub struct External(pub Child);

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program`, and waits until a line of its output contains `ready`.
/// `None` when the program is not installed and the suite does not require it.
pub fn start_external(
    program: &str,
    args: &[String],
    ready: &str,
    from_stderr: bool,
) -> Option<External> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if std::env::var_os("RAMKV_REQUIRE_EXTERNAL").is_none() => {
            eprintln!("skipping: cannot run {program} ({e}); scripts/test installs it");
            return None;
        }
        Err(e) => panic!("{program} is required (RAMKV_REQUIRE_EXTERNAL): {e}"),
    };
    let out: Box<dyn Read + Send> = if from_stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let ext = External(child);
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break,
            Some(Ok(_)) => {}
            _ => panic!("{program} exited before it was ready"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Some(ext)
}

/// Parses ramkv-bench's one-line JSON.
pub fn json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A ramkv server on a loopback port, with `kv` and, if given, TLS.
pub fn ramkv_server_with(
    kv: ramkv::kv::KvOptions,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> ramkv::Server<ramkv::kv::KvService> {
    let svc = ramkv::kv::KvService::new(kv).expect("valid options");
    let mut b = ramkv::ServerBuilder::new(svc)
        .listen("127.0.0.1:0")
        .pin(false);
    if let Some((cert, key)) = tls {
        b = b.tls(cert, key);
    }
    b.start().expect("server starts")
}

/// A ramkv server with the default options on a loopback port.
pub fn ramkv_server() -> ramkv::Server<ramkv::kv::KvService> {
    ramkv_server_with(ramkv::kv::KvOptions::default(), None)
}
