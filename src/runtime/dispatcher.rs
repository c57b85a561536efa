//! Dispatcher threads: they own every socket. Each runs a tokio
//! `current_thread` runtime that accepts connections, and for each one drives
//! a [`Conn`]: reads into it, lets it admit frames (queueing them for the
//! pool, or running them in place), writes every reply that is ready in one
//! write, and closes gracefully when the connection says so.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Conn, Timer};
use super::exec::{Exec, Round};
use super::frame::{Framer, RequestBudget};
use super::listen::{Inbox, Listener};
use super::metrics::Metrics;
use super::reply::ReplySink;
use super::roster::{Roster, RosterGuard};
use super::service::{ExecContext, Rejection, Service};
use super::thread::Threads;
use super::tls::Handshakes;
use super::{Figures, Limits};

/// What every dispatcher shares.
pub struct Shared<S: Service> {
    /// The service.
    pub service: Arc<S>,
    /// Per-connection limits.
    pub limits: Limits,
    /// Counters, with one slot per dispatcher.
    pub metrics: Arc<Metrics>,
    /// The runtime's figures, for STATS.
    pub figures: Arc<Figures>,
    /// Where admitted requests run: the architecture.
    pub exec: Exec<S>,
    /// Set when connections must start with a TLS handshake.
    pub tls: Option<Arc<super::tls::Handshakes>>,
    /// Cancelled on shutdown: stop accepting, drain, close.
    pub shutdown: CancellationToken,
    /// Connections open across all dispatchers, checked against `max_connections`.
    pub open_connections: AtomicUsize,
    /// Connections refused at `max_connections` and still being closed.
    pub refusals: super::Refusals,
    /// Dispatcher `i`'s executing slot is `exec_base + i` (lb: after the
    /// workers').
    pub exec_base: usize,
    /// Memory of partly received requests, across all connections.
    pub budget: Arc<RequestBudget>,
    /// Each dispatcher's open connections, by their reply sinks. Shutdown
    /// stops each through its sink, which its task waits on anyway: the wait
    /// needs no shutdown future, whose poll cost about 150 instructions a
    /// round.
    pub rosters: Vec<Arc<Roster<Arc<ReplySink>>>>,
}

/// Starts dispatcher thread `index`.
pub fn spawn<S: Service>(
    index: usize,
    shared: Arc<Shared<S>>,
    listener: Listener,
    inbox: Inbox,
    core: Option<core_affinity::CoreId>,
    threads: &mut Threads,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    threads.spawn(format!("ramkv-dispatch-{index}"), move || {
        super::thread::prepare(core);
        if let Err(e) = rt.block_on(run(index, shared, listener, inbox)) {
            tracing::error!(dispatcher = index, error = %e, "dispatcher failed");
        }
    })
}

async fn accept(l: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn run<S: Service>(
    index: usize,
    shared: Arc<Shared<S>>,
    listener: Listener,
    mut inbox: Inbox,
) -> io::Result<()> {
    let (std_listener, peers) = match listener {
        Listener::Accept(l) => (Some(l), Vec::new()),
        Listener::Distribute { listener, peers } => (Some(listener), peers),
        Listener::Handoff => (None, Vec::new()),
    };
    let listener = std_listener.map(TcpListener::from_std).transpose()?;
    let tracker = TaskTracker::new();
    let roster = &shared.rosters[index];
    let mut next_peer = 0usize;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = accept(&listener) => match accepted {
                Ok((stream, peer)) if peers.is_empty() => start_connection(stream, Some(peer), index, &shared, &tracker),
                Ok((stream, peer)) => {
                    let target = next_peer % peers.len();
                    next_peer = next_peer.wrapping_add(1);
                    if target == index {
                        start_connection(stream, Some(peer), index, &shared, &tracker);
                    } else if let Ok(s) = stream.into_std() {
                        // Fails only if that dispatcher has already exited.
                        let _ = peers[target].send(s);
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on it.
                    tracing::warn!(dispatcher = index, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(s) = inbox.recv() => match TcpStream::from_std(s) {
                Ok(stream) => {
                    let peer = stream.peer_addr().ok();
                    start_connection(stream, peer, index, &shared, &tracker);
                }
                Err(e) => tracing::warn!(dispatcher = index, error = %e, "could not adopt connection"),
            },
        }
    }
    drop(listener);
    roster.for_each(|sink| sink.request_stop());
    tracker.close();
    if tokio::time::timeout(shared.limits.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            dispatcher = index,
            "drain timeout: closing connections with replies unsent"
        );
    }
    Ok(())
}

/// What a connection's task owns besides its socket and reply sink: the
/// shared state, its dispatcher, and its place in the roster. Dropped
/// however the task ends, it takes the connection out of the open counts
/// and the roster.
struct ConnTask<S: Service> {
    shared: Arc<Shared<S>>,
    index: usize,
    registered: RosterGuard<Arc<ReplySink>>,
}

impl<S: Service> ConnTask<S> {
    /// Logs how the connection ended, if in error; the peer is looked up
    /// in the roster, so the task carries no copy of it.
    fn ended(&self, result: io::Result<()>) {
        if let Err(e) = result {
            let peer = self.registered.peer();
            let index = self.index;
            tracing::debug!(dispatcher = index, ?peer, error = %e, "connection ended with an error");
        }
    }
}

impl<S: Service> Drop for ConnTask<S> {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Relaxed);
        let stats = self.shared.metrics.dispatcher(self.index);
        stats.connections_open.fetch_sub(1, Relaxed);
    }
}

fn start_connection<S: Service>(
    stream: TcpStream,
    peer: Option<SocketAddr>,
    index: usize,
    shared: &Arc<Shared<S>>,
    tracker: &TaskTracker,
) {
    if shared.open_connections.fetch_add(1, Relaxed) >= shared.limits.max_connections {
        shared.open_connections.fetch_sub(1, Relaxed);
        shared.metrics.connections_rejected.fetch_add(1, Relaxed);
        let why = Rejection::TooManyConnections {
            limit: shared.limits.max_connections,
        };
        let mut frame = BytesMut::new();
        let _ = S::encode(&S::reject(None, &why), &mut frame);
        match shared.refusals.try_linger() {
            Some(place) => {
                let limits = shared.limits.clone();
                let tls = shared.tls.clone();
                tracker.spawn(async move {
                    let _place = place;
                    let mut stream = stream;
                    match tls {
                        None => refuse(&mut stream, &frame, &limits).await,
                        // The refusal goes inside TLS: sent in plaintext it
                        // reaches the client's TLS stack as a corrupt
                        // record, not as the reason. The handshake is bounded
                        // like any other, and by the lingering places.
                        Some(handshakes) => {
                            if let Ok(mut tls) =
                                handshakes.accept(stream, limits.frame_timeout).await
                            {
                                refuse(&mut tls, &frame, &limits).await;
                            }
                        }
                    }
                });
            }
            // Too many refusals lingering: a fresh socket's send buffer
            // takes a small frame at once; close without waiting. (Over TLS
            // nothing can be said without a handshake: just close.)
            None => {
                if shared.tls.is_none() {
                    let _ = stream.try_write(&frame);
                }
            }
        }
        return;
    }
    let stats = shared.metrics.dispatcher(index);
    stats.connections_total.fetch_add(1, Relaxed);
    stats.connections_open.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    // Registered now, not when the task first runs: shutdown may come first.
    let sink = Arc::new(ReplySink::default());
    let task = ConnTask {
        shared: shared.clone(),
        index,
        registered: shared.rosters[index].add(sink.clone(), peer),
    };
    match &shared.tls {
        None => {
            tracker.spawn(serve_plain(stream, task, sink));
        }
        Some(handshakes) => {
            let handshakes = handshakes.clone();
            // A task of its own type: a handshake and a TLS stream (some
            // kilobytes) never enlarge a plain connection's task.
            tracker.spawn(async move {
                let result = serve_tls(&handshakes, stream, &task, sink).await;
                task.ended(result);
            });
        }
    }
}

/// A plain TCP connection's whole task. Not an `async fn`, which would keep
/// its arguments twice (as arguments and as locals); and [`serve`] borrows
/// the socket, so the task holds it once. Every byte here is paid by every
/// idle connection.
#[allow(clippy::manual_async_fn)]
fn serve_plain<S: Service>(
    mut stream: TcpStream,
    task: ConnTask<S>,
    sink: Arc<ReplySink>,
) -> impl Future<Output = ()> {
    async move {
        let result = serve(&mut stream, &task, sink).await;
        task.ended(result);
    }
}

/// Serves a TLS connection: its handshake (on the handshake threads), then
/// [`serve`]. A handshake that stalls is a frame that never finishes.
/// Nothing is owed before the handshake ends: shutdown drops it.
async fn serve_tls<S: Service>(
    handshakes: &Handshakes,
    stream: TcpStream,
    task: &ConnTask<S>,
    sink: Arc<ReplySink>,
) -> io::Result<()> {
    let shared = &task.shared;
    tokio::select! {
        tls = handshakes.accept(stream, shared.limits.frame_timeout) => serve(&mut tls?, task, sink).await,
        _ = shared.shutdown.cancelled() => Ok(()),
    }
}

/// The connection's one timer, re-armed only when its deadline moves
/// earlier: a later deadline (the idle deadline moves with every read) is
/// picked up when the timer fires, so a busy connection does not touch the
/// timer wheel per request.
struct ConnTimer {
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl ConnTimer {
    fn new() -> Self {
        ConnTimer {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed_for: None,
        }
    }

    /// Arms the timer for `deadline`, whatever it was armed for.
    fn set(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline.into());
        self.armed_for = Some(deadline);
    }

    fn arm(&mut self, deadline: Instant) {
        if self.armed_for.is_none_or(|a| deadline < a) {
            self.sleep.as_mut().reset(deadline.into());
            self.armed_for = Some(deadline);
        }
    }

    /// The timer fired: true if `deadline` has really passed; else (it was
    /// armed for an earlier deadline that has since moved) re-arms for it.
    fn fired(&mut self, deadline: Instant) -> bool {
        self.armed_for = None;
        if Instant::now() < deadline {
            self.arm(deadline);
            return false;
        }
        true
    }
}

/// Serves one connection until it is finished, then closes it gracefully.
// An `async fn` would keep its arguments twice in every connection's task.
#[allow(clippy::manual_async_fn)]
fn serve<'a, S: Service, IO: AsyncRead + AsyncWrite + Unpin>(
    io: &'a mut IO,
    task: &'a ConnTask<S>,
    sink: Arc<ReplySink>,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        let (shared, index) = (&*task.shared, task.index);
        let limits = &shared.limits;
        let stats = shared.metrics.dispatcher(index);
        let mut conn =
            Conn::<S>::with_sink(limits, shared.budget.clone(), Instant::now(), sink.clone());
        let runtime = |out: &mut Vec<(String, u64)>| shared.figures.collect(out);
        let mut wbuf = BytesMut::new();
        let mut timer = ConnTimer::new();
        // Bytes the last wait read: stamped as activity with the clock reading
        // taken when the wait is over (not the one before it, which may be long
        // past after an idle spell).
        let mut just_read = 0usize;
        // One clock reading per wake-up serves the whole round (admission, the
        // frame clock, queueing timestamps); requests run here move the round's
        // clock on (see `Round`); one more after a write, or else one before
        // waiting when requests were handed off, counts the round's busy time.
        let mut now = Instant::now();
        let mut round_start = now;
        loop {
            // Shutdown: stop admitting; what was read is still answered.
            if sink.take_stop() {
                conn.shutdown();
            }
            conn.on_read(std::mem::take(&mut just_read), now);
            let round = Round::new(now);
            let more = conn.admit(&*shared.service, limits, now, |req, responder| {
                // Built here, not held across an await: it is not Send.
                let ctx = ExecContext {
                    slot: shared.exec_base + index,
                    runtime: &runtime,
                };
                let svc = &*shared.service;
                shared
                    .exec
                    .submit(svc, &shared.metrics, &ctx, req, responder, &round)
            });
            // Requests run here may have taken long: a reply is activity from
            // when the last one ended.
            let wrote = conn.take_replies(&mut wbuf, round.now()) > 0;
            if wrote {
                stats.bytes_out.fetch_add(wbuf.len() as u64, Relaxed);
                write_all(&mut *io, &wbuf, &mut timer, limits.write_timeout).await?;
                wbuf.clear();
                // The write may have taken long: what follows is timed from its end.
                now = Instant::now();
                conn.on_written(now);
                // Admission only goes round again when it may have work:
                // replies from workers are picked up by the wait below.
                if more || conn.may_admit() {
                    continue;
                }
            } else if more {
                now = round.now();
                continue;
            }
            if conn.finished() {
                break;
            }
            // Requests handed off cost decoding and the hand-off: busy time.
            // Otherwise `now` is recent enough (read after the last write or
            // the wake-up, and only bookkeeping has run since).
            let waiting_from = if round.submitted() && !wrote {
                Instant::now()
            } else {
                now
            };
            stats
                .busy_ns
                .fetch_add((waiting_from - round_start).as_nanos() as u64, Relaxed);
            let deadline = conn.deadline(limits);
            if let Some((at, _)) = deadline {
                timer.arm(at);
            }
            conn.settle();
            let input = conn.input(limits);
            let reading = input.is_some();
            // The sink comes first, and with it shutdown: a client that never
            // stops sending would otherwise keep the read branch ready and be
            // served on.
            tokio::select! {
                biased;
                _ = sink.ready() => {}
                r = read_into(&mut *io, input), if reading => match r? {
                    0 => conn.on_eof(),
                    n => {
                        stats.bytes_in.fetch_add(n as u64, Relaxed);
                        just_read = n;
                    }
                },
                _ = &mut timer.sleep, if deadline.is_some() => {
                    if timer.fired(deadline.map_or(waiting_from, |(at, _)| at)) {
                        conn.on_deadline(limits, Instant::now());
                        if let Some((_, Timer::Idle)) = deadline {
                            tracing::debug!(dispatcher = index, "closing an idle connection");
                        }
                    }
                },
            }
            now = Instant::now();
            round_start = now;
        }
        // Boxed: once per connection, and inline its state would sit in every
        // connection's task.
        Box::pin(close_gracefully(io, &mut timer, limits.linger)).await
    }
}

/// Reads into `framer` (see [`Framer::poll_fill`]): an idle connection
/// holds no read buffer while it waits here.
async fn read_into<IO: AsyncRead + Unpin>(
    io: &mut IO,
    framer: Option<&mut Framer>,
) -> io::Result<usize> {
    match framer {
        Some(f) => {
            std::future::poll_fn(|cx| {
                f.poll_fill(|buf| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf))
            })
            .await
        }
        None => std::future::pending().await,
    }
}

/// Writes a connection's refusal, then closes gracefully, so that the
/// client reads it before the close.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, frame: &[u8], limits: &Limits) {
    let mut timer = ConnTimer::new();
    if write_all(&mut *io, frame, &mut timer, limits.write_timeout)
        .await
        .is_ok()
    {
        let _ = close_gracefully(io, &mut timer, limits.linger).await;
    }
}

/// Writes `buf` whole, within `limit` in all. What the socket takes at once,
/// the common case, is written with no future kept, no clock read and no
/// timer; only a write that would block arms the connection's timer, in a
/// boxed future: its state would otherwise sit in every connection's task
/// (a third of it, idle or not).
// An `async fn` would keep its arguments twice in every connection's task.
#[allow(clippy::manual_async_fn)]
fn write_all<'a, IO: AsyncWrite + Unpin>(
    io: &'a mut IO,
    buf: &'a [u8],
    timer: &'a mut ConnTimer,
    limit: Duration,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        let mut written = 0;
        let done = std::future::poll_fn(|cx| {
            Poll::Ready(write_now(Pin::new(&mut *io), cx, buf, &mut written))
        })
        .await?;
        if done {
            return Ok(());
        }
        Box::pin(write_within(io, &buf[written..], timer, limit)).await
    }
}

/// Writes and flushes as much of `buf` as the socket takes now, counting it
/// in `written`; true when all of it went out. The flush matters for TLS: a
/// write can leave the last records buffered inside rustls; for TCP it is
/// free.
fn write_now<IO: AsyncWrite>(
    mut io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    buf: &[u8],
    written: &mut usize,
) -> io::Result<bool> {
    while *written < buf.len() {
        match io.as_mut().poll_write(cx, &buf[*written..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => *written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        }
    }
    match io.poll_flush(cx) {
        Poll::Ready(r) => r.map(|()| true),
        Poll::Pending => Ok(false),
    }
}

/// The rest of [`write_all`], once the socket is full: waits for it to
/// drain, failing when `limit` passes first.
async fn write_within<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    buf: &[u8],
    timer: &mut ConnTimer,
    limit: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    timer.arm(deadline);
    let write = async {
        io.write_all(buf).await?;
        io.flush().await
    };
    let mut write = std::pin::pin!(write);
    loop {
        tokio::select! {
            biased;
            result = &mut write => return result,
            _ = &mut timer.sleep => if timer.fired(deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading replies",
                ));
            },
        }
    }
}

/// Half-closes (after TLS's close_notify), then reads and discards until the
/// peer closes or `linger` passes. Closing a socket with unread input makes
/// the kernel send a reset, which can discard replies the peer has not read
/// yet; draining first makes the close a FIN. Timed by the connection's own
/// timer, so the connection's task carries no second one.
async fn close_gracefully<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    timer: &mut ConnTimer,
    linger: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + linger;
    timer.set(deadline);
    let drain = async {
        io.shutdown().await?;
        // On the heap: an array here would sit in every connection's task,
        // idle or not.
        let mut sink = vec![0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    tokio::select! {
        r = drain => r,
        _ = &mut timer.sleep => Ok(()),
    }
}
