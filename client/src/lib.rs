//! Async client for ramkv.
//!
//! One [`Client`] is one TCP connection at a time. Any number of tasks may
//! call it at once: each call gets its own request id, the requests are
//! pipelined on the connection, and replies, which may come back in any order,
//! are matched to their callers by id. When the connection drops (the server's
//! idle timeout, a restart), the calls waiting on it fail with
//! [`Error::Closed`], and the next call dials again.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ramkv_client::Error> {
//! let client = ramkv_client::Client::connect("127.0.0.1:7878").await?;
//! let version = client.put("greeting", "hello").await?;
//! let entry = client.get("greeting").await?.expect("just stored");
//! assert_eq!(entry.version, version);
//! # Ok(()) }
//! ```
//!
//! The crate also holds the `ramkv` command-line client, behind the `cli`
//! feature, so that the library's users compile no argument parser.

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_stream_lite::next_frame;

/// The protocol's types (`proto/ramkv.proto`), the very ones the server uses.
pub use ramkv_proto as proto;

use proto::request::Op;
use proto::response::Result as Res;
pub use proto::{Request, Response, Status};

/// Everything that can go wrong with a call. Outcomes a caller branches on
/// (a missing key, a failed compare-and-set, overload) are variants of their
/// own rather than strings.
///
/// New variants may be added, so a `match` needs a catch-all arm.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached, or the TLS handshake failed.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// No reply within the call's timeout; the reply, if it comes, is dropped.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection went while this call waited, or (with
    /// [`ClientOptions::reconnect`] off) before it. The string says why. The
    /// request may or may not have been applied, so it is not retried for you.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A compare-and-set found another version: retry with `current`.
    #[error("version mismatch: the current version is {current} (0: the key does not exist)")]
    VersionMismatch {
        /// The key's version now (0: absent).
        current: u64,
    },
    /// The server shed the request; retrying later may succeed.
    #[error("server overloaded: {0}")]
    Overloaded(String),
    /// The server wants a (different) token; the connection is closed.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The token file could not be read or was empty.
    #[error("cannot read the auth token file: {0}")]
    TokenFile(String),
    /// TLS cannot be set up on this side: the CA file cannot be read or
    /// holds no certificate, or the address is not a valid TLS server name.
    /// Nothing was sent.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    /// Any other error status, with the server's message.
    #[error("server answered {status:?}: {message}")]
    Server {
        /// The reply's status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// A reply that does not fit the request: a bug on one side.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// A value with the version of the write that stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored bytes.
    pub value: Bytes,
    /// The version of the write that stored them, for compare-and-set.
    pub version: u64,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Default limit for each call; see [`Client::call_with_timeout`].
    pub timeout: Duration,
    /// Limit for the TCP connect (and TLS handshake).
    pub connect_timeout: Duration,
    /// Largest reply frame accepted.
    pub max_frame: usize,
    /// Authenticate with the token in this file (the server's
    /// `--auth-token-file`) before any other request.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Dial again (and authenticate again) on the first call after the
    /// connection dropped, instead of failing every later call with
    /// [`Error::Closed`]. A long-lived client needs this: the server closes
    /// idle connections (`--idle-timeout`, 300 s by default).
    pub reconnect: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_frame: 64 << 20,
            auth_token_file: None,
            tls_ca: None,
            reconnect: true,
        }
    }
}

type Waiters = Mutex<Waiting>;

/// Calls awaiting replies, or why none will come any more.
struct Waiting {
    by_id: HashMap<u64, oneshot::Sender<Response>>,
    closed: Option<String>,
}

/// One TCP (or TLS) connection and the calls waiting on it.
struct Conn {
    frames: mpsc::UnboundedSender<Bytes>,
    waiting: Arc<Waiters>,
    next_id: AtomicU64,
    peer: SocketAddr,
}

struct Inner {
    /// The address as given, dialled again on reconnect (so DNS is re-read).
    target: String,
    opts: ClientOptions,
    conn: Mutex<Arc<Conn>>,
    /// Held while dialling again, so concurrent callers dial once.
    redial: tokio::sync::Mutex<()>,
    /// When the last re-dial failed, and why: callers that were already
    /// waiting for it get that answer instead of each dialling in turn.
    failed_dial: Mutex<Option<(Instant, Error)>>,
}

/// A connection to a ramkv server; cheap to clone, and every clone shares it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Locks `m` even if a panicking holder poisoned it: every value kept under
/// these locks is whole between statements.
fn lock_any<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connects with default options.
    pub async fn connect(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<Client, Error> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with the given options. Must be called inside a tokio runtime,
    /// which then runs the connection's reader and writer tasks.
    pub async fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Display,
        opts: ClientOptions,
    ) -> Result<Client, Error> {
        let target = addr.to_string();
        let conn = Conn::open(addr, &target, &opts).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                target,
                opts,
                conn: Mutex::new(conn),
                redial: tokio::sync::Mutex::new(()),
                failed_dial: Mutex::new(None),
            }),
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.current().peer
    }

    /// False once the connection has dropped and no call has dialled again.
    pub fn is_connected(&self) -> bool {
        !self.current().is_closed()
    }

    fn current(&self) -> Arc<Conn> {
        lock_any(&self.inner.conn).clone()
    }

    /// The live connection, dialling again if it dropped and
    /// [`ClientOptions::reconnect`] is on. Callers that arrive together share
    /// one dial: its connection if it succeeds, its error if it fails. A
    /// caller that arrives after a failure dials again.
    async fn live(&self) -> Result<Arc<Conn>, Error> {
        let conn = self.current();
        if !conn.is_closed() || !self.inner.opts.reconnect {
            return Ok(conn);
        }
        let asked = Instant::now();
        let _dialling = self.inner.redial.lock().await;
        let conn = self.current();
        if !conn.is_closed() {
            return Ok(conn); // another caller dialled while this one waited
        }
        let failed_meanwhile = match &*lock_any(&self.inner.failed_dial) {
            Some((at, why)) if *at >= asked => Some(why.clone()),
            _ => None,
        };
        if let Some(why) = failed_meanwhile {
            return Err(why); // a dial failed while this one waited
        }
        let target = self.inner.target.as_str();
        match Conn::open(target, target, &self.inner.opts).await {
            Ok(fresh) => {
                *lock_any(&self.inner.conn) = fresh.clone();
                *lock_any(&self.inner.failed_dial) = None;
                Ok(fresh)
            }
            Err(e) => {
                *lock_any(&self.inner.failed_dial) = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Sends one request with the default timeout and returns the raw reply,
    /// whatever its status.
    pub async fn call(&self, op: Op) -> Result<Response, Error> {
        self.call_with_timeout(op, self.inner.opts.timeout).await
    }

    /// Sends one request and waits at most `timeout` for its reply. A reply
    /// that comes later is discarded.
    pub async fn call_with_timeout(&self, op: Op, timeout: Duration) -> Result<Response, Error> {
        self.live().await?.call(op, timeout).await
    }

    /// The value and version of `key`, or `None` if it does not exist.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Entry>, Error> {
        let resp = self.call(Op::Get(proto::Get { key: key.into() })).await?;
        match check(resp, &[Status::NotFound])? {
            (Status::NotFound, _) => Ok(None),
            (_, Some(Res::Get(g))) => Ok(Some(Entry {
                value: g.value,
                version: g.version,
            })),
            (_, other) => Err(unexpected("GET", other)),
        }
    }

    /// Stores `value` under `key`; returns the new version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Error> {
        self.put_op(key.into(), value.into(), None).await
    }

    /// Stores `value` only if the key's current version is `expected`
    /// (0: only if the key does not exist). Fails with
    /// [`Error::VersionMismatch`] otherwise.
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        expected: u64,
    ) -> Result<u64, Error> {
        self.put_op(key.into(), value.into(), Some(expected)).await
    }

    async fn put_op(
        &self,
        key: Bytes,
        value: Bytes,
        expected_version: Option<u64>,
    ) -> Result<u64, Error> {
        let resp = self
            .call(Op::Put(proto::Put {
                key,
                value,
                expected_version,
            }))
            .await?;
        match check(resp, &[])? {
            (_, Some(Res::Put(p))) => Ok(p.version),
            (_, other) => Err(unexpected("PUT", other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let resp = self
            .call(Op::Delete(proto::Delete {
                key: key.into(),
                expected_version: None,
            }))
            .await?;
        Ok(check(resp, &[Status::NotFound])?.0 == Status::Ok)
    }

    /// Gets several keys in one round trip; one item per key, in order.
    pub async fn multi_get<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Entry>>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        let resp = self.call(Op::MultiGet(proto::MultiGet { keys })).await?;
        match check(resp, &[])? {
            (_, Some(Res::MultiGet(m))) => Ok(m
                .items
                .into_iter()
                .map(|i| {
                    i.found.then_some(Entry {
                        value: i.value,
                        version: i.version,
                    })
                })
                .collect()),
            (_, other) => Err(unexpected("MULTI_GET", other)),
        }
    }

    /// Puts several entries in one round trip; returns their new versions.
    pub async fn multi_put<K: Into<Bytes>, V: Into<Bytes>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Vec<u64>, Error> {
        let entries = entries
            .into_iter()
            .map(|(k, v)| proto::KeyValue {
                key: k.into(),
                value: v.into(),
            })
            .collect();
        let resp = self.call(Op::MultiPut(proto::MultiPut { entries })).await?;
        match check(resp, &[])? {
            (_, Some(Res::MultiPut(m))) => Ok(m.versions),
            (_, other) => Err(unexpected("MULTI_PUT", other)),
        }
    }

    /// Round trip to the server; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        let resp = self
            .call(Op::Ping(proto::Ping {
                payload: Bytes::new(),
            }))
            .await?;
        check(resp, &[])?;
        Ok(start.elapsed())
    }

    /// The server's counters and gauges, by name.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, Error> {
        let resp = self.call(Op::Stats(proto::Stats {})).await?;
        match check(resp, &[])? {
            (_, Some(Res::Stats(s))) => {
                Ok(s.metrics.into_iter().map(|m| (m.name, m.value)).collect())
            }
            (_, other) => Err(unexpected("STATS", other)),
        }
    }
}

impl Conn {
    /// Dials `addr` (shown as `shown` in errors), starts the reader and
    /// writer tasks, and authenticates if the options name a token file.
    async fn open(
        addr: impl ToSocketAddrs,
        shown: &str,
        opts: &ClientOptions,
    ) -> Result<Arc<Conn>, Error> {
        // Read on every dial, so a rotated token is picked up on reconnect.
        let token = match &opts.auth_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        // Local TLS settings are checked before anything is dialled.
        let tls = match &opts.tls_ca {
            Some(ca) => Some((
                tls::connector(ca).map_err(Error::TlsSetup)?,
                tls::server_name(shown).map_err(Error::TlsSetup)?,
            )),
            None => None,
        };
        let fail = |message: String| Error::Connect {
            addr: shown.to_string(),
            message,
        };
        // Only here, where nothing answered, is the likely cause no server.
        let unreachable = |why: String| fail(format!("{why} (is ramkv-server running there?)"));
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("timed out after {:?}", opts.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        let peer = stream.peer_addr().map_err(|e| fail(e.to_string()))?;
        let (frames, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting {
            by_id: HashMap::new(),
            closed: None,
        }));
        match tls {
            Some((connector, name)) => {
                let tls = tls::handshake(&connector, name, shown, stream)
                    .await
                    .map_err(fail)?;
                let (read, write) = tokio::io::split(tls);
                tokio::spawn(write_loop(write, rx, waiting.clone()));
                tokio::spawn(read_loop(read, opts.max_frame, waiting.clone()));
            }
            None => {
                let (read, write) = stream.into_split();
                tokio::spawn(write_loop(write, rx, waiting.clone()));
                tokio::spawn(read_loop(read, opts.max_frame, waiting.clone()));
            }
        }
        let conn = Arc::new(Conn {
            frames,
            waiting,
            next_id: AtomicU64::new(1),
            peer,
        });
        if let Some(token) = token {
            let auth = Op::Auth(proto::Auth {
                token: token.into(),
            });
            check(conn.call(auth, opts.timeout).await?, &[])?;
        }
        Ok(conn)
    }

    fn is_closed(&self) -> bool {
        lock_any(&self.waiting).closed.is_some()
    }

    async fn call(&self, op: Op, timeout: Duration) -> Result<Response, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lock_any(&self.waiting);
            if let Some(why) = &w.closed {
                return Err(Error::Closed(why.clone()));
            }
            w.by_id.insert(id, tx);
        }
        let req = Request { id, op: Some(op) };
        let mut buf = BytesMut::with_capacity(proto::frame_len(&req));
        if let Err(e) = proto::encode_frame(&req, &mut buf) {
            lock_any(&self.waiting).by_id.remove(&id);
            return Err(Error::Protocol(e.to_string()));
        }
        if self.frames.send(buf.freeze()).is_err() {
            lock_any(&self.waiting).by_id.remove(&id);
            return Err(Error::Closed("connection writer stopped".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => {
                let why = lock_any(&self.waiting).closed.clone();
                Err(Error::Closed(
                    why.unwrap_or_else(|| "connection closed".into()),
                ))
            }
            Err(_) => {
                lock_any(&self.waiting).by_id.remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }
}

/// Reads a token file; whitespace around the token is ignored. Errors name
/// the file, never its contents.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    let raw =
        std::fs::read(path).map_err(|e| Error::TokenFile(format!("{}: {e}", path.display())))?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(Error::TokenFile(format!(
            "{} holds no token",
            path.display()
        )));
    }
    Ok(token.to_vec())
}

fn unexpected(op: &str, got: Option<Res>) -> Error {
    Error::Protocol(format!("{op} reply carried {got:?}"))
}

/// Turns error statuses into [`Error`]s, except those in `allowed`.
fn check(resp: Response, allowed: &[Status]) -> Result<(Status, Option<Res>), Error> {
    let status = Status::try_from(resp.status)
        .map_err(|_| Error::Protocol(format!("unknown status {}", resp.status)))?;
    if status == Status::Ok || allowed.contains(&status) {
        return Ok((status, resp.result));
    }
    Err(match (status, resp.result) {
        (Status::VersionMismatch, Some(Res::Put(p))) => {
            Error::VersionMismatch { current: p.version }
        }
        (Status::VersionMismatch, Some(Res::Delete(d))) => {
            Error::VersionMismatch { current: d.version }
        }
        (Status::Overloaded, _) => Error::Overloaded(resp.message),
        (Status::Unauthenticated, _) => Error::Unauthenticated(resp.message),
        _ => Error::Server {
            status,
            message: resp.message,
        },
    })
}

/// Writes queued frames, coalescing all that are ready into one write.
async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    waiting: Arc<Waiters>,
) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            buf.extend_from_slice(&more);
        }
        // flush: under TLS, write_all may leave records buffered in rustls.
        let written = match w.write_all(&buf).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            fail_all(&waiting, format!("write failed: {e}"));
            return;
        }
        buf.clear();
    }
    // Every handle is gone. Say so: under TLS this sends close_notify, and
    // either way a FIN, so the server closes too instead of holding the
    // connection until its idle timeout.
    let _ = w.shutdown().await;
}

/// Routes each reply to its caller; on close, fails every waiting call.
async fn read_loop<R: tokio::io::AsyncRead + Unpin>(r: R, max_frame: usize, waiting: Arc<Waiters>) {
    let mut frames = tokio_util::codec::FramedRead::new(
        r,
        tokio_util::codec::LengthDelimitedCodec::builder()
            .max_frame_length(max_frame)
            .new_codec(),
    );
    // Why the server said it is closing: the reason given to calls still
    // waiting when the connection ends.
    let mut closing: Option<String> = None;
    let why = loop {
        let frame = match next_frame(&mut frames).await {
            Some(Ok(f)) => f,
            Some(Err(e)) => break closing.unwrap_or_else(|| format!("read failed: {e}")),
            None => break closing.unwrap_or_else(|| "server closed the connection".into()),
        };
        let resp = match Response::decode(frame.freeze()) {
            Ok(r) => r,
            Err(e) => break format!("undecodable reply: {e}"),
        };
        if resp.id == 0 && resp.status != Status::Ok as i32 {
            // A connection-level error (too many connections, oversize
            // frame). The server still writes every reply it owes before it
            // closes, and they may come after this: keep reading them.
            closing.get_or_insert(format!("server: {}", resp.message));
            continue;
        }
        let ends_connection = resp.status == Status::Unauthenticated as i32;
        if let Some(tx) = lock_any(&waiting).by_id.remove(&resp.id) {
            let _ = tx.send(resp);
        }
        if ends_connection {
            break "server refused authentication".to_string();
        }
    };
    fail_all(&waiting, why);
}

fn fail_all(waiting: &Waiters, why: String) {
    let mut w = lock_any(waiting);
    w.closed.get_or_insert(why);
    w.by_id.clear();
}

/// `StreamExt::next` for `FramedRead`, without a dependency on a streams crate.
mod tokio_stream_lite {
    use std::pin::Pin;

    use futures_core::Stream;

    pub async fn next_frame<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
}
