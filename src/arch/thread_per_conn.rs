//! One acceptor thread, then one blocking thread per connection that reads,
//! executes and writes: the classic design, kept as a baseline.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::auth::{Authenticator, Gate};
use crate::dispatcher::{ConnLimits, frame_timeout_response};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::wire::{self, Status, decode_request, error_response};

/// Everything the connection threads share.
struct Ctx {
    service: Arc<Service>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    limits: ConnLimits,
    max_connections: usize,
    stopping: AtomicBool,
    /// Open connections, so shutdown can end their blocking reads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

/// The running acceptor.
pub struct ThreadPerConn {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl ThreadPerConn {
    /// Starts the acceptor thread on `listener`.
    pub fn start(
        listener: TcpListener,
        service: Arc<Service>,
        auth: Authenticator,
        metrics: Arc<Metrics>,
        limits: ConnLimits,
        max_connections: usize,
    ) -> io::Result<Self> {
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            service,
            auth,
            metrics,
            limits,
            max_connections,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let c = ctx.clone();
        let acceptor = std::thread::Builder::new()
            .name("ramkv-acceptor".into())
            .spawn(move || accept_loop(listener, c))?;
        Ok(ThreadPerConn {
            ctx,
            addr,
            acceptor,
        })
    }

    /// Stops accepting, lets each connection finish the request it is
    /// running and write its replies, then returns.
    pub fn shutdown(self) {
        self.ctx.stopping.store(true, Relaxed);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect(self.addr);
        let _ = self.acceptor.join();
        let conns: Vec<TcpStream> = self.ctx.lock_conns().drain().map(|(_, s)| s).collect();
        for s in &conns {
            // Ends the blocking read; requests already read still get replies.
            let _ = s.shutdown(Shutdown::Read);
        }
        // Wait (bounded by the write timeout each thread has) for every
        // connection thread to drop its context.
        while Arc::strong_count(&self.ctx) > 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Ctx {
    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let stats = ctx.metrics.dispatcher(0);
    for stream in listener.incoming() {
        if ctx.stopping.load(Relaxed) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        if stats.connections_open.load(Relaxed) as usize >= ctx.max_connections {
            ctx.metrics.connections_rejected.fetch_add(1, Relaxed);
            let frame = wire::too_many_connections_frame(ctx.max_connections);
            let _ = stream.write_all(&frame);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = ctx.next_id.fetch_add(1, Relaxed);
        if let Ok(clone) = stream.try_clone() {
            ctx.lock_conns().insert(id, clone);
        }
        stats.connections_total.fetch_add(1, Relaxed);
        stats.connections_open.fetch_add(1, Relaxed);
        let c = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ramkv-conn-{id}"))
            .spawn(move || {
                crate::thread::prepare(None);
                if let Err(e) = serve(stream, id, &c) {
                    tracing::debug!(conn = id, error = %e, "connection ended with an error");
                }
                c.lock_conns().remove(&id);
                c.metrics
                    .dispatcher(0)
                    .connections_open
                    .fetch_sub(1, Relaxed);
            });
        if spawned.is_err() {
            tracing::warn!("could not start a connection thread");
            ctx.lock_conns().remove(&id);
            stats.connections_open.fetch_sub(1, Relaxed);
        }
    }
}

fn serve(mut stream: TcpStream, id: u64, ctx: &Ctx) -> io::Result<()> {
    stream.set_write_timeout(Some(ctx.limits.write_timeout))?;
    let stats = ctx.metrics.dispatcher(0);
    let exec = ctx.metrics.exec(id as usize);
    let mut codec = wire::frame_codec(ctx.limits.max_frame);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut authed = !ctx.auth.required();
    let mut timeout_is_frame: Option<bool> = None;
    loop {
        // Idle connections get the idle timeout; a half-read frame the frame timeout.
        let partial = !rbuf.is_empty();
        // A syscall, so only when the kind of wait changes.
        if timeout_is_frame != Some(partial) {
            let t = if partial {
                ctx.limits.frame_timeout
            } else {
                ctx.limits.idle_timeout
            };
            stream.set_read_timeout(Some(t))?;
            timeout_is_frame = Some(partial);
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // With a read timeout set, an interrupted read fails with EINTR
            // instead of restarting (signal(7)): a signal or a debugger
            // attaching is not the client's doing, so read again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if partial {
                    wire::encode_response(
                        &frame_timeout_response(ctx.limits.frame_timeout),
                        &mut wbuf,
                    );
                    let _ = stream.write_all(&wbuf);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        stats.bytes_in.fetch_add(n as u64, Relaxed);
        rbuf.extend_from_slice(&chunk[..n]);
        let mut fatal = false;
        loop {
            match codec.decode(&mut rbuf) {
                Ok(Some(frame)) => {
                    let resp = match decode_request(frame.freeze())
                        .map(|req| ctx.auth.gate(&mut authed, req))
                    {
                        Ok(Gate::Pass(req)) => {
                            let start = Instant::now();
                            let resp = ctx.service.execute(req, exec);
                            exec.service_time.record(start.elapsed());
                            resp
                        }
                        Ok(Gate::Reply(resp)) => resp,
                        Ok(Gate::ReplyAndClose(resp)) => {
                            fatal = true;
                            resp
                        }
                        Err(e) => error_response(e.id, Status::InvalidRequest, e.to_string()),
                    };
                    wire::encode_response(&resp, &mut wbuf);
                    if fatal {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let msg = format!(
                        "frame exceeds the {}-byte limit (--max-frame); closing the connection",
                        ctx.limits.max_frame
                    );
                    wire::encode_response(&error_response(0, Status::TooLarge, msg), &mut wbuf);
                    fatal = true;
                    break;
                }
            }
        }
        if !wbuf.is_empty() {
            stats.bytes_out.fetch_add(wbuf.len() as u64, Relaxed);
            stream.write_all(&wbuf)?;
            wbuf.clear();
        }
        if fatal {
            return Ok(());
        }
    }
}
