//! Dispatcher threads: they own every socket. Each runs a tokio
//! `current_thread` runtime that accepts connections, reads and frames
//! requests, hands each one to the [`Executor`], and writes the replies that
//! come back through the connection's [`ReplySink`].
//!
//! A dispatcher gets its connections in one of three ways (see
//! [`Listener`]): its own SO_REUSEPORT socket, a clone of one socket shared
//! by every dispatcher, or a hand-off from the dispatcher that accepts for all.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::arch::Executor;
use crate::auth::{Authenticator, Gate};
use crate::metrics::{DispatcherStats, Metrics};
use crate::reply::ReplySink;
use crate::wire::{self, Status, decode_request, error_response};

/// Read buffer growth step. Large enough that a busy pipelined connection
/// is drained in few `read` calls.
const READ_CHUNK: usize = 64 * 1024;

/// Per-connection limits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Largest frame accepted (`--max-frame`); a larger prefix closes the connection.
    pub max_frame: usize,
    /// Requests in flight at which the connection stops being read.
    pub max_in_flight: usize,
    /// Reply bytes waiting at which the connection stops being read.
    pub max_outbound: usize,
    /// How long a reply write may block before the client is dropped.
    pub write_timeout: Duration,
    /// Close a connection idle (nothing read, nothing in flight) this long.
    pub idle_timeout: Duration,
    /// A started frame must complete within this long.
    pub frame_timeout: Duration,
}

impl ConnLimits {
    /// The connection limits a server configuration sets.
    pub fn from_config(cfg: &crate::Config) -> Self {
        ConnLimits {
            max_frame: cfg.max_frame as usize,
            max_in_flight: cfg.max_in_flight,
            max_outbound: cfg.max_outbound as usize,
            write_timeout: cfg.write_timeout,
            idle_timeout: cfg.idle_timeout,
            frame_timeout: cfg.frame_timeout,
        }
    }
}

/// The reply that ends a connection whose frame never completed.
pub fn frame_timeout_response(t: Duration) -> crate::wire::Response {
    error_response(
        0,
        Status::InvalidRequest,
        format!(
            "incomplete frame: no complete frame within {t:?} (--frame-timeout); closing the connection"
        ),
    )
}

/// What every dispatcher shares.
pub struct Shared {
    /// Per-connection limits.
    pub limits: ConnLimits,
    /// Counters, with one slot per dispatcher.
    pub metrics: Arc<Metrics>,
    /// Runs or queues decoded requests: the architecture.
    pub executor: Arc<dyn Executor>,
    /// Decides whether a connection may send requests yet.
    pub auth: Authenticator,
    /// Set when connections must start with a TLS handshake.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled on SIGINT/SIGTERM: stop accepting, drain, close.
    pub shutdown: CancellationToken,
    /// Connections open across all dispatchers, checked against `max_connections`.
    pub open_connections: AtomicUsize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// How long shutdown waits for connections to drain.
    pub drain_timeout: Duration,
}

/// Where a dispatcher's connections come from.
pub enum Listener {
    /// A socket this dispatcher accepts on: its own SO_REUSEPORT socket, or a
    /// clone of one shared by every dispatcher.
    Accept(std::net::TcpListener),
    /// This dispatcher accepts for all and deals connections round-robin to
    /// the dispatchers behind `peers` (itself included, at its own index).
    Distribute {
        /// The one listening socket.
        listener: std::net::TcpListener,
        /// Every dispatcher's inbox, indexed by dispatcher.
        peers: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    },
    /// Connections arrive only from the distributing dispatcher.
    Handoff,
}

/// Starts dispatcher thread `index`.
pub fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listener: Listener,
    inbox: mpsc::UnboundedReceiver<std::net::TcpStream>,
    core: Option<core_affinity::CoreId>,
) -> io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("ramkv-dispatch-{index}"))
        .spawn(move || {
            crate::thread::prepare(core);
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

async fn run(
    index: usize,
    shared: Arc<Shared>,
    listener: Listener,
    mut inbox: mpsc::UnboundedReceiver<std::net::TcpStream>,
) -> io::Result<()> {
    let (std_listener, peers) = match listener {
        Listener::Accept(l) => (Some(l), Vec::new()),
        Listener::Distribute { listener, peers } => (Some(listener), peers),
        Listener::Handoff => (None, Vec::new()),
    };
    let listener = std_listener.map(TcpListener::from_std).transpose()?;
    let tracker = TaskTracker::new();
    let mut next_peer = 0usize;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = accept(&listener) => match accepted {
                Ok((stream, _)) if peers.is_empty() => start_connection(stream, index, &shared, &tracker),
                Ok((stream, _)) => {
                    let target = next_peer % peers.len();
                    next_peer = next_peer.wrapping_add(1);
                    if target == index {
                        start_connection(stream, index, &shared, &tracker);
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
                Ok(stream) => start_connection(stream, index, &shared, &tracker),
                Err(e) => tracing::warn!(dispatcher = index, error = %e, "could not adopt connection"),
            },
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(shared.drain_timeout, tracker.wait())
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

/// Decrements the open-connection count when a connection task ends, however it ends.
struct OpenGuard<'a>(&'a AtomicUsize, &'a DispatcherStats);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
        self.1.connections_open.fetch_sub(1, Relaxed);
    }
}

fn start_connection(stream: TcpStream, index: usize, shared: &Arc<Shared>, tracker: &TaskTracker) {
    if shared.open_connections.fetch_add(1, Relaxed) >= shared.max_connections {
        shared.open_connections.fetch_sub(1, Relaxed);
        shared.metrics.connections_rejected.fetch_add(1, Relaxed);
        let frame = wire::too_many_connections_frame(shared.max_connections);
        // Best effort: a fresh socket's send buffer takes a small frame at once.
        let _ = stream.try_write(&frame);
        return;
    }
    let stats = shared.metrics.dispatcher(index);
    stats.connections_total.fetch_add(1, Relaxed);
    stats.connections_open.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    tracker.spawn(async move {
        let _guard = OpenGuard(&shared.open_connections, shared.metrics.dispatcher(index));
        let peer = stream.peer_addr().ok();
        let result = match &shared.tls {
            None => serve_connection(stream, index, &shared).await,
            // A handshake that stalls is a frame that never finishes.
            Some(acceptor) => match tokio::time::timeout(shared.limits.frame_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(tls, index, &shared).await,
                Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
            },
        };
        if let Err(e) = result {
            tracing::debug!(dispatcher = index, ?peer, error = %e, "connection ended with an error");
        }
    });
}

/// Turns one frame into a request for the executor, or an error reply.
/// Returns false when the connection must close after its replies.
fn submit_frame(
    frame: Bytes,
    sink: &Arc<ReplySink>,
    shared: &Shared,
    authed: &mut bool,
    index: usize,
) -> bool {
    let req = match decode_request(frame) {
        Ok(req) => req,
        Err(e) => {
            sink.push(&error_response(e.id, Status::InvalidRequest, e.to_string()));
            return true;
        }
    };
    match shared.auth.gate(authed, req) {
        Gate::Pass(req) => shared.executor.submit(req, sink, index),
        Gate::Reply(resp) => sink.push(&resp),
        Gate::ReplyAndClose(resp) => {
            sink.push(&resp);
            return false;
        }
    }
    true
}

/// Serves one connection until the peer closes it, it breaks, or shutdown
/// has drained it. Reads, decodes and submits every complete frame, then
/// writes every reply that is ready in one write, then waits for either.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    index: usize,
    shared: &Shared,
) -> io::Result<()> {
    let limits = &shared.limits;
    let stats = shared.metrics.dispatcher(index);
    let sink = Arc::new(ReplySink::default());
    // However this function ends, replies still being computed are dropped.
    struct CloseSink<'a>(&'a ReplySink);
    impl Drop for CloseSink<'_> {
        fn drop(&mut self) {
            self.0.close()
        }
    }
    let _close = CloseSink(&sink);

    let mut codec = wire::frame_codec(limits.max_frame);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::new();
    // Requests decoded whose replies have not yet been taken for writing.
    let mut in_flight = 0usize;
    // The socket may still be read (no EOF, no shutdown, no framing error).
    let mut read_open = true;
    // Frames may still be decoded (false after an oversize frame or a failed AUTH).
    let mut decode_open = true;
    let mut authed = !shared.auth.required();
    // One timer, re-armed only when its deadline moves: the idle timeout
    // when nothing is buffered or in flight, the frame timeout while a
    // frame is half-read.
    let mut last_read = Instant::now();
    let mut frame_started: Option<Instant> = None;
    let mut timer = Box::pin(tokio::time::sleep(limits.idle_timeout));
    let mut armed_for: Option<Instant> = None;
    loop {
        let busy_from = Instant::now();
        // 1. Submit every complete frame already read, up to the caps.
        let mut held_back = false;
        if decode_open {
            let outbound_full = sink.pending_bytes() >= limits.max_outbound;
            loop {
                if in_flight >= limits.max_in_flight || outbound_full {
                    held_back = true;
                    break;
                }
                match codec.decode(&mut rbuf) {
                    Ok(Some(frame)) => {
                        in_flight += 1;
                        if !submit_frame(frame.freeze(), &sink, shared, &mut authed, index) {
                            decode_open = false;
                            read_open = false;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // The stream can no longer be trusted: say why, then close.
                        let announced = rbuf
                            .get(..4)
                            .map_or(0, |h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
                        let msg = format!(
                            "frame of {announced} bytes exceeds the {}-byte limit (--max-frame); closing the connection",
                            limits.max_frame
                        );
                        in_flight += 1;
                        sink.push(&error_response(0, Status::TooLarge, msg));
                        decode_open = false;
                        read_open = false;
                        break;
                    }
                }
            }
        }
        // 2. Write every reply that is ready, in one write.
        let ready = sink.take(&mut wbuf);
        if ready > 0 {
            in_flight -= ready;
            stats.bytes_out.fetch_add(wbuf.len() as u64, Relaxed);
            // The flush matters for TLS: a write that would block can leave
            // the last records buffered inside rustls; for TCP it is free.
            let write = async {
                stream.write_all(&wbuf).await?;
                stream.flush().await
            };
            match tokio::time::timeout(limits.write_timeout, write).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "peer stopped reading replies",
                    ));
                }
            }
            wbuf.clear();
            stats
                .busy_ns
                .fetch_add(busy_from.elapsed().as_nanos() as u64, Relaxed);
            continue;
        }
        stats
            .busy_ns
            .fetch_add(busy_from.elapsed().as_nanos() as u64, Relaxed);
        if !read_open && in_flight == 0 && !held_back {
            break;
        }
        // 3. Wait for a reply to write, for more requests to read, or for a timeout.
        let can_read = read_open && !held_back;
        frame_started = if rbuf.is_empty() || held_back {
            None
        } else {
            frame_started.or(Some(busy_from))
        };
        let deadline = match frame_started {
            _ if !read_open => None,
            Some(t) => Some(t + limits.frame_timeout),
            None if in_flight == 0 => Some(last_read + limits.idle_timeout),
            None => None,
        };
        // Re-arm only when the deadline moves earlier. A later one (the
        // idle deadline moves with every read) is handled when the timer
        // fires early, so a busy connection does not touch the timer wheel
        // per request.
        if let Some(d) = deadline
            && armed_for.is_none_or(|a| d < a)
        {
            timer.as_mut().reset(d.into());
            armed_for = Some(d);
        }
        if can_read && rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            _ = sink.ready() => {}
            r = stream.read_buf(&mut rbuf), if can_read => match r? {
                0 => {
                    read_open = false;
                    if !rbuf.is_empty() && codec.decode_eof(&mut rbuf).is_err() {
                        tracing::debug!(dispatcher = index, "peer closed mid-frame; partial frame dropped");
                    }
                    rbuf.clear();
                }
                n => {
                    stats.bytes_in.fetch_add(n as u64, Relaxed);
                    last_read = Instant::now();
                }
            },
            _ = &mut timer, if deadline.is_some() => match deadline {
                Some(d) if Instant::now() < d => {
                    // Fired for an older, earlier deadline: move on to the real one.
                    timer.as_mut().reset(d.into());
                    armed_for = Some(d);
                }
                _ => {
                    read_open = false;
                    decode_open = false;
                    armed_for = None;
                    if frame_started.is_some() {
                        in_flight += 1;
                        sink.push(&frame_timeout_response(limits.frame_timeout));
                    }
                }
            },
            _ = shared.shutdown.cancelled(), if read_open => read_open = false,
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}
