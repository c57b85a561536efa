//! The admin endpoint (`--admin ADDR`): Prometheus text format at
//! `GET /metrics`, the same figures the STATS op returns.
//!
//! It is deliberately tiny: one blocking thread, one request per
//! connection, no keep-alive. Scrapers poll it every few seconds; it never
//! touches the request path.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::service::Service;

/// The running admin endpoint.
pub struct Admin {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and serves until [`Admin::stop`].
    pub fn start(addr: SocketAddr, service: Arc<Service>) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("ramkv-admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(conn) = conn
                        && let Err(e) = answer(conn, &service)
                    {
                        tracing::debug!(error = %e, "admin request failed");
                    }
                }
            })?;
        Ok(Admin {
            addr,
            stopping,
            thread,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        let _ = self.thread.join();
    }
}

fn answer(mut conn: TcpStream, service: &Service) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    // Read the request head; the request line is all that matters.
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", Metrics::prometheus_text(&service.figures())),
        (Some("GET"), Some(_)) => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "use GET /metrics\n".to_string()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(header.as_bytes())?;
    conn.write_all(body.as_bytes())
}
