//! Thread per connection, the classic design, kept as a baseline: one
//! acceptor thread, then one blocking thread per connection that drives its
//! [`Conn`]. It reads with a timeout set to the connection's next deadline,
//! runs what it admits in place, and writes the replies, the whole of each
//! write bounded by the write timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::conn::Conn;
use super::exec::{Exec, Round};
use super::frame::{READ_CHUNK, RequestBudget};
use super::metrics::Metrics;
use super::roster::{Roster, RosterGuard};
use super::service::{ExecContext, Rejection, Service};
use super::{Figures, Limits};

/// Metrics slots for connection threads (a connection uses its id's slot,
/// wrapping).
pub const EXEC_SLOTS: usize = 64;

/// Everything the connection threads share.
struct Ctx<S: Service> {
    service: Arc<S>,
    limits: Limits,
    metrics: Arc<Metrics>,
    figures: Arc<Figures>,
    exec: Exec<S>,
    budget: Arc<RequestBudget>,
    stopping: AtomicBool,
    /// Open connections, so shutdown can end their blocking reads.
    conns: Arc<Roster<TcpStream>>,
    /// Connection threads still running, and a signal when one ends.
    live: Mutex<usize>,
    ended: Condvar,
    next_id: AtomicU64,
    /// Connections refused at `max_connections` and still being closed.
    refusals: super::Refusals,
}

impl<S: Service> Ctx<S> {
    fn lock_live(&self) -> std::sync::MutexGuard<'_, usize> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running acceptor.
pub struct Acceptor<S: Service> {
    ctx: Arc<Ctx<S>>,
    addr: SocketAddr,
    /// The listening socket, again: shutting it down wakes the acceptor.
    listening: TcpListener,
    thread: JoinHandle<()>,
}

impl<S: Service> Acceptor<S> {
    /// Starts the acceptor thread on `listener`.
    pub fn start(
        listener: TcpListener,
        service: Arc<S>,
        limits: Limits,
        metrics: Arc<Metrics>,
        figures: Arc<Figures>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let listening = listener.try_clone()?;
        let conns = Arc::new(Roster::new(None));
        figures.set_connections(vec![conns.clone()]);
        let ctx = Arc::new(Ctx {
            service,
            budget: Arc::new(RequestBudget::new(limits.max_request_memory)),
            limits,
            metrics,
            figures,
            exec: Exec::Inline,
            stopping: AtomicBool::new(false),
            conns: conns.clone(),
            live: Mutex::new(0),
            ended: Condvar::new(),
            next_id: AtomicU64::new(0),
            refusals: super::Refusals::default(),
        });
        let c = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("ramkv-acceptor".into())
            .spawn(move || accept_loop(listener, c))?;
        Ok(Acceptor {
            ctx,
            addr,
            listening,
            thread,
        })
    }

    /// Stops accepting, lets each connection finish the request it is running
    /// and write its replies, and returns once they are done or at `deadline`,
    /// whichever comes first; threads still running then are left to finish.
    pub fn shutdown(self, deadline: Instant) {
        self.ctx.stopping.store(true, Relaxed);
        // Wake the blocking accept: on Linux, shutting a listening socket
        // down makes accept return (EINVAL). This needs no new file
        // descriptor, so it works when they have run out, which a wake-up
        // connection of our own would not; that is only the fallback.
        if socket2::SockRef::from(&self.listening)
            .shutdown(Shutdown::Read)
            .is_err()
        {
            let _ = TcpStream::connect(self.addr);
        }
        let _ = self.thread.join();
        self.ctx.conns.for_each(|s| {
            // Ends the blocking read; the replies owed are still written.
            let _ = s.shutdown(Shutdown::Read);
        });
        let mut live = self.ctx.lock_live();
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    connections = *live,
                    "drain timeout: leaving connection threads behind"
                );
                return;
            }
            live = match self.ctx.ended.wait_timeout(live, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

fn accept_loop<S: Service>(listener: TcpListener, ctx: Arc<Ctx<S>>) {
    loop {
        let accepted = listener.accept();
        if ctx.stopping.load(Relaxed) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => adopt(stream, peer, &ctx),
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on it.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Starts a thread for a new connection, or turns it away at the limit.
fn adopt<S: Service>(stream: TcpStream, peer: SocketAddr, ctx: &Arc<Ctx<S>>) {
    let stats = ctx.metrics.dispatcher(0);
    if stats.connections_open.load(Relaxed) as usize >= ctx.limits.max_connections {
        ctx.metrics.connections_rejected.fetch_add(1, Relaxed);
        let why = Rejection::TooManyConnections {
            limit: ctx.limits.max_connections,
        };
        let mut frame = BytesMut::new();
        let _ = S::encode(&S::reject(None, &why), &mut frame);
        refuse(stream, frame, ctx);
        return;
    }
    let _ = stream.set_nodelay(true);
    let id = ctx.next_id.fetch_add(1, Relaxed);
    let listed = stream
        .try_clone()
        .ok()
        .map(|clone| ctx.conns.add(clone, Some(peer)));
    stats.connections_total.fetch_add(1, Relaxed);
    stats.connections_open.fetch_add(1, Relaxed);
    *ctx.lock_live() += 1;
    let guard = Cleanup {
        ctx: ctx.clone(),
        _listed: listed,
    };
    let spawned = std::thread::Builder::new()
        .name(format!("ramkv-conn-{id}"))
        .spawn(move || {
            super::thread::prepare(None);
            if let Err(e) = serve(stream, id, &guard.ctx) {
                tracing::debug!(conn = id, error = %e, "connection ended with an error");
            }
            drop(guard);
        });
    if let Err(e) = spawned {
        // The closure, and the guard in it, was dropped: cleaned up.
        tracing::warn!(error = %e, "could not start a connection thread");
    }
}

/// Writes the refusal and closes gracefully, on a short-lived thread of its
/// own while there are places for lingering refusals; else closes at once.
fn refuse<S: Service>(mut stream: TcpStream, frame: BytesMut, ctx: &Ctx<S>) {
    let limits = ctx.limits.clone();
    let Some(place) = ctx.refusals.try_linger() else {
        let _ = stream.set_nonblocking(true);
        let _ = stream.write_all(&frame);
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("ramkv-refuse".into())
        .spawn(move || {
            let _place = place;
            let _ = stream.set_write_timeout(Some(limits.write_timeout));
            if stream.write_all(&frame).is_ok() {
                close_gracefully(&mut stream, limits.linger);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start a thread to refuse a connection");
    }
}

/// Unregisters a connection however its thread ends, a panic included.
struct Cleanup<S: Service> {
    ctx: Arc<Ctx<S>>,
    /// Removes it from the roster (after `drop` below has run).
    _listed: Option<RosterGuard<TcpStream>>,
}

impl<S: Service> Drop for Cleanup<S> {
    fn drop(&mut self) {
        self.ctx
            .metrics
            .dispatcher(0)
            .connections_open
            .fetch_sub(1, Relaxed);
        *self.ctx.lock_live() -= 1;
        self.ctx.ended.notify_all();
    }
}

fn serve<S: Service>(mut stream: TcpStream, id: u64, ctx: &Ctx<S>) -> io::Result<()> {
    let limits = &ctx.limits;
    let stats = ctx.metrics.dispatcher(0);
    let slot = id as usize % EXEC_SLOTS;
    let runtime = |out: &mut Vec<(String, u64)>| ctx.figures.collect(out);
    let exec_ctx = ExecContext {
        slot,
        runtime: &runtime,
    };
    let mut conn = Conn::<S>::new(limits, ctx.budget.clone(), Instant::now());
    let mut wbuf = BytesMut::new();
    let mut scratch = vec![0u8; READ_CHUNK];
    // The read timeout now set (a system call to change).
    let mut read_timeout: Option<Option<Duration>> = None;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    // The clock is read after each read, after a write only if it had to
    // wait, and at the end of each request run (by the round); everything
    // between uses the latest reading.
    let mut now = Instant::now();
    loop {
        if ctx.stopping.load(Relaxed) {
            conn.shutdown();
        }
        let round = Round::new(now);
        let more = conn.admit(&*ctx.service, limits, now, |req, responder| {
            let (svc, metrics) = (&*ctx.service, &ctx.metrics);
            ctx.exec
                .submit(svc, metrics, &exec_ctx, req, responder, &round)
        });
        // The requests just run may have taken long: a reply is activity
        // from when the last one ended.
        now = round.now();
        if conn.take_replies(&mut wbuf, now) > 0 {
            stats.bytes_out.fetch_add(wbuf.len() as u64, Relaxed);
            if write_within(&mut stream, &wbuf, now, limits.write_timeout)? {
                // It had to wait: the idle clock restarts at its end.
                now = Instant::now();
                conn.on_written(now);
            }
            wbuf.clear();
            if more || conn.may_admit() {
                continue;
            }
        } else if more {
            continue;
        }
        if conn.finished() {
            break;
        }
        // Wait for bytes until the next deadline. The timeout is a system
        // call, and the idle deadline moves with every request, so it is
        // only shortened when it must be, or lengthened when it is far too
        // short; a timeout that fires early just comes round the loop.
        let wait = conn.time_left(limits, now);
        if wait == Some(Duration::ZERO) {
            conn.on_deadline(limits, now);
            continue;
        }
        if needs_new_timeout(read_timeout, wait) {
            stream.set_read_timeout(wait)?;
            read_timeout = Some(wait);
        }
        conn.settle();
        let Some(buf) = conn.read_buf(limits) else {
            // The shared request budget is spent: wait a little for it.
            std::thread::sleep(
                wait.unwrap_or(Duration::from_millis(10))
                    .min(Duration::from_millis(10)),
            );
            now = Instant::now();
            continue;
        };
        let room = (buf.capacity() - buf.len()).clamp(1, scratch.len());
        let read = stream.read(&mut scratch[..room]);
        now = Instant::now();
        match read {
            Ok(0) => conn.on_eof(),
            Ok(n) => {
                stats.bytes_in.fetch_add(n as u64, Relaxed);
                buf.extend_from_slice(&scratch[..n]);
                conn.on_read(n, now);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                conn.on_deadline(limits, now);
            }
            // A read with a timeout fails with EINTR instead of restarting
            // (signal(7)); a signal or a tracer is not the client's doing.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    close_gracefully(&mut stream, limits.linger);
    Ok(())
}

/// Whether the socket's read timeout (`set`, `None` before the first) must
/// change to serve `wait`: when it would wait too long, or less than half as
/// long as it may.
fn needs_new_timeout(set: Option<Option<Duration>>, wait: Option<Duration>) -> bool {
    match (set, wait) {
        (None, _) => true,
        (Some(None), w) => w.is_some(),
        (Some(Some(_)), None) => true,
        (Some(Some(t)), Some(w)) => w < t || w > 2 * t,
    }
}

/// Writes `buf` whole within `limit` of `from` (a recent clock reading): a
/// client that reads a little at a time cannot stretch one reply past the
/// write timeout. (The socket's own timeout, `limit`, bounds each `write`
/// call; it is re-set to what is left only after a partial write, so the
/// common case costs no extra system call, clock read or deadline.)
///
/// Returns whether it had to wait. The first `send` does not block
/// (`MSG_DONTWAIT`), so when the socket takes the whole buffer at once, as
/// it nearly always does, the caller knows the write took no time and needs
/// no clock reading to restart the idle clock.
fn write_within(
    stream: &mut TcpStream,
    mut buf: &[u8],
    from: Instant,
    limit: Duration,
) -> io::Result<bool> {
    // MSG_NOSIGNAL as std's own writes use: a reset peer is an EPIPE error,
    // not a SIGPIPE that kills a process that has not ignored it.
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    match socket2::SockRef::from(&*stream).send_with_flags(buf, flags) {
        Ok(n) if n == buf.len() => return Ok(false),
        Ok(n) => buf = &buf[n..],
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) => {}
        Err(e) => return Err(e),
    }
    let mut shortened = false;
    let result = loop {
        if buf.is_empty() {
            break Ok(());
        }
        match stream.write(buf) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading replies",
                ));
            }
            Err(e) => break Err(e),
        }
        if !buf.is_empty() {
            let left = (from + limit).saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading replies",
                ));
            }
            stream.set_write_timeout(Some(left))?;
            shortened = true;
        }
    };
    if shortened {
        stream.set_write_timeout(Some(limit))?;
    }
    result.map(|()| true)
}

/// Half-closes, then reads and discards until the peer closes or `linger`
/// passes, so unread input does not make the kernel reset the connection and
/// discard replies the peer has not read yet.
fn close_gracefully(stream: &mut TcpStream, linger: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + linger;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
