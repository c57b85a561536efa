//! The load engine.
//!
//! Each generator thread runs a tokio `current_thread` runtime that owns its
//! share of the connections. In open loop, a scheduler task walks a Poisson
//! schedule: it waits for each arrival with the [`Pacer`] (a precise timer,
//! then a short spin), encodes the request and writes it to its connection at
//! once. **A request's latency runs from its scheduled time**, not from when
//! it was written, so a stalled server (or a generator that fell behind)
//! shows in the numbers instead of silently lowering the offered rate.
//!
//! **One wake-up per request.** Sleeping costs a context switch per wake-up
//! (about 20 µs of CPU on the development VM), and waking for every reply as
//! well as for every send cost more CPU and timed replies by when the
//! generator got to them. So an open loop over plain TCP keeps its sockets
//! out of the runtime's epoll set: a reply does not wake the thread, it waits
//! in the socket until the pacer wakes for the next send, and is timed by the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`, taken when the packet
//! arrived), not by when it was read. TLS connections and closed loops keep a
//! reader task per connection, woken by each reply.
//!
//! The engine also checks itself: it records how late each request left
//! against its schedule ([`RunResult::adherence`]), its own CPU from
//! `getrusage`, and how busy and how often preempted its threads were, so a
//! late run says whether the generator or the machine was the limit.
//!
//! ramkv replies carry the request id, and the engine uses the scheduled
//! time (ns since start, plus one) *as* the id, so matching a reply costs
//! nothing. memcache and Redis reply in order, so they use a FIFO of
//! scheduled times per connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSliceMut, Write as _};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::{TimeSpec, TimeValLike};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use crate::dist::{KeyDist, ServiceDist, SizeDist, poisson_gap_ns};
use crate::pacer::{Pacer, Pacing, minimal_timer_slack};
use crate::protocol::{self, Kind, Operation, ReplyError, Target};
use crate::usage::CpuSample;

/// What to send.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Size of the key space.
    pub keys: u64,
    /// How keys are drawn from it.
    pub key_dist: KeyDist,
    /// Bytes per key.
    pub key_size: usize,
    /// Fraction of GETs; the rest are SETs.
    pub get_ratio: f64,
    /// Bytes per SET value.
    pub value_size: SizeDist,
    /// `(K, F)`: K connections carry a fraction F of all requests.
    pub hot_conns: Option<(usize, f64)>,
    /// When set, every request is ramkv's SPIN op with a service time drawn from it.
    pub service: Option<ServiceDist>,
    /// With `service`: the server sleeps for the time instead of spinning,
    /// as a handler blocked on I/O would (ramkv's emulated many-core mode).
    pub service_sleeps: bool,
}

/// Open loop at a rate, or closed loop at a concurrency.
#[derive(Copy, Clone, Debug)]
pub enum Mode {
    /// Poisson arrivals at this many requests per second.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// This many requests outstanding per connection, always.
    Closed {
        /// Requests outstanding per connection.
        concurrency: usize,
    },
}

/// How to run.
#[derive(Clone)]
pub struct RunConfig {
    /// The server and its protocol.
    pub target: Target,
    /// Connections, spread round-robin over the threads.
    pub connections: usize,
    /// Generator threads, each with its own runtime.
    pub threads: usize,
    /// Open or closed loop.
    pub mode: Mode,
    /// Measured time, after the warmup.
    pub duration: Duration,
    /// Requests scheduled during the warmup are sent but not measured.
    pub warmup: Duration,
    /// How long to wait for outstanding replies after the run; those still
    /// missing count as timeouts.
    pub drain: Duration,
    /// How the open loop waits for each send.
    pub pacing: Pacing,
    /// A request sent within this long of its scheduled time is on time
    /// (see [`RunResult::adherence`]).
    pub on_time: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// ramkv's shared secret, sent as AUTH on every connection first.
    pub auth_token: Option<Vec<u8>>,
    /// Connect with TLS (ramkv targets).
    pub tls: Option<TlsConnector>,
    /// Give up on a connection (connect, TLS, AUTH) after this long.
    pub connect_timeout: Duration,
    /// Seed for every random choice, so runs are repeatable.
    pub seed: u64,
    /// ramkv's admin endpoint: each run starts once the server has closed
    /// every connection (up to [`QUIET_WITHIN`]), and records which
    /// dispatcher serves each of its own ([`RunResult::placement`]).
    pub admin: Option<String>,
    /// How the connections are spread over the server's dispatchers (needs
    /// `admin` unless [`Place::AsAccepted`](crate::placement::Place)).
    pub place: crate::placement::Place,
}

/// Error replies and lost requests, counted by status, with the first
/// message the server gave for each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorTally {
    by_status: BTreeMap<String, (u64, String)>,
}

/// The status requests lost with their connection are counted under.
pub const DISCONNECTED: &str = "DISCONNECTED";

impl ErrorTally {
    /// Counts `n` errors of `status`; the first message for a status is kept.
    pub fn add(&mut self, status: &str, message: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.by_status.get_mut(status) {
            Some((count, _)) => *count += n,
            None => {
                self.by_status
                    .insert(status.to_string(), (n, message.to_string()));
            }
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &ErrorTally) {
        for (status, (n, message)) in &other.by_status {
            self.add(status, message, *n);
        }
    }

    /// All errors.
    pub fn total(&self) -> u64 {
        self.by_status.values().map(|(n, _)| n).sum()
    }

    /// `(status, count, message)`, most common first.
    pub fn by_count(&self) -> Vec<(&str, u64, &str)> {
        let mut v: Vec<_> = self
            .by_status
            .iter()
            .map(|(s, (n, m))| (s.as_str(), *n, m.as_str()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// What the generator itself used during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GeneratorUsage {
    /// CPU of the whole process per wall second (`getrusage`), in cores.
    pub cpu_cores: f64,
    /// The busiest generator thread's CPU per wall second, 0–1. Near 1, the
    /// generator itself is the limit.
    pub busiest_thread: f64,
    /// Involuntary context switches of the generator threads: the kernel
    /// took their CPU away although they could run (the machine is shared).
    pub preempted: u64,
}

/// What a run measured.
pub struct RunResult {
    /// Requests per second asked for (0 in closed loop).
    pub offered_rate: f64,
    /// The measured window.
    pub duration: Duration,
    /// Successful replies to requests scheduled in the measured window.
    pub completed: u64,
    /// Error replies, and requests lost with their connection, in the window.
    pub errors: ErrorTally,
    /// Requests still unanswered after the drain, on live connections.
    pub timeouts: u64,
    /// Latency in ns, from scheduled send to reply.
    pub latency: Histogram<u64>,
    /// How far behind schedule requests were sent, in ns (open loop).
    pub lateness: Histogram<u64>,
    /// Requests the schedule placed in the measured window (open loop).
    /// Each is sent, on time or late, so this is the load actually offered.
    pub sent: u64,
    /// Of those, how many were sent within `on_time` of their schedule.
    pub sent_on_time: u64,
    /// What the generator used.
    pub generator: GeneratorUsage,
    /// Each connection's server dispatcher, by connection index (with
    /// [`RunConfig::admin`]).
    pub placement: Option<crate::placement::Placement>,
    /// The mean time the server spent executing each request it finished
    /// during the run, warmup and drain included, in µs (with
    /// [`RunConfig::admin`]): what the requests' service really took, for
    /// example how late sleeps ended on this machine at this load.
    pub server_service_us: Option<f64>,
    /// The mean service time the run's SPIN requests asked for, in µs, over
    /// every request sent, warmup included (`None` without `--service`): set
    /// against `server_service_us`, how late the server's sleeps ended.
    pub requested_service_us: Option<f64>,
}

impl RunResult {
    /// Successful replies per second.
    pub fn achieved_rate(&self) -> f64 {
        self.completed as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// The share of requests sent within the on-time threshold of their
    /// scheduled time, as Caladan's generator reports it; `None` in closed
    /// loop or when nothing was sent.
    pub fn adherence(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.sent_on_time as f64 / self.sent as f64)
    }
}

/// Below this adherence a run is flagged: its latencies include the
/// generator's own delay.
pub const WARN_ADHERENCE: f64 = 0.999;
/// Below this adherence a run is invalid: it did not offer the load it claims.
pub const MIN_ADHERENCE: f64 = 0.95;

fn new_hist() -> Histogram<u64> {
    // Auto-resizing, 3 significant digits: 0.1% resolution at any latency.
    let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is a valid precision"));
    h.auto(true);
    h
}

/// Live counts for the progress line, shared with the reporting thread.
struct Interval {
    hist: Histogram<u64>,
    completed: u64,
    errors: u64,
}

/// How a connection's bytes travel.
enum Transport {
    /// Open loop over plain TCP: outside the runtime, read by the
    /// scheduler's [`LazyReader`] when it wakes, timed by the kernel.
    Lazy(std::net::TcpStream),
    /// Plain TCP in the runtime: written at once, read by a reader task.
    Tcp(OwnedWriteHalf),
    /// TLS: written by a writer task, read by a reader task.
    Stream,
}

/// One connection of a generator thread.
struct Conn {
    transport: Transport,
    /// Encoded requests not yet taken by the socket.
    out: RefCell<BytesMut>,
    /// Replies read but not yet complete ([`Transport::Lazy`]).
    inbuf: RefCell<BytesMut>,
    /// Set while the writer task owns a backlog the socket would not take.
    backlog: Cell<bool>,
    /// Wakes the writer task.
    wake: Notify,
    /// Scheduled times of requests awaiting in-order replies.
    fifo: RefCell<VecDeque<u64>>,
    outstanding: Cell<u64>,
    /// Why the connection is gone, once it is.
    lost: RefCell<Option<String>>,
}

impl Conn {
    fn new(transport: Transport) -> Conn {
        Conn {
            transport,
            out: RefCell::new(BytesMut::with_capacity(16 * 1024)),
            inbuf: RefCell::new(BytesMut::new()),
            backlog: Cell::new(false),
            wake: Notify::new(),
            fifo: RefCell::new(VecDeque::new()),
            outstanding: Cell::new(0),
            lost: RefCell::new(None),
        }
    }

    fn alive(&self) -> bool {
        self.lost.borrow().is_none()
    }

    fn fail(&self, why: String) {
        self.lost.borrow_mut().get_or_insert(why);
    }

    /// Sends what is buffered: straight to the socket for plain TCP (no task
    /// hop, so the send time is the scheduled time), through the writer task
    /// for TLS or for what a runtime socket would not take. What a lazy
    /// socket would not take waits for the next flush.
    fn flush(&self) {
        let written = match &self.transport {
            Transport::Lazy(s) => write_now(&mut &*s, &mut self.out.borrow_mut()),
            Transport::Tcp(tcp) if !self.backlog.get() => {
                write_now(&mut TryWrite(tcp), &mut self.out.borrow_mut())
            }
            _ => Ok(false),
        };
        match written {
            Ok(true) => {}
            Ok(false) if matches!(self.transport, Transport::Lazy(_)) => {}
            Ok(false) => {
                self.backlog
                    .set(matches!(self.transport, Transport::Tcp(_)));
                self.wake.notify_one();
            }
            Err(e) => self.fail(format!("write failed: {e}")),
        }
    }
}

/// `Write` for a runtime socket's non-blocking `try_write`.
struct TryWrite<'a>(&'a OwnedWriteHalf);

impl std::io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes as much of `out` as a non-blocking socket takes now. True when
/// all of it went.
fn write_now(w: &mut impl std::io::Write, out: &mut BytesMut) -> std::io::Result<bool> {
    while !out.is_empty() {
        match w.write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads the [`Transport::Lazy`] connections of one thread, when asked:
/// replies wait in their sockets until then, and each is timed by the
/// kernel's receive timestamp, so reading late does not make it look slow.
struct LazyReader {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    scratch: Vec<u8>,
    cmsg: Vec<u8>,
    /// `CLOCK_REALTIME` at the run's start: kernel timestamps are realtime.
    realtime_base: TimeSpec,
}

impl LazyReader {
    fn new(conns: &[Rc<Conn>], realtime_base: TimeSpec) -> std::io::Result<LazyReader> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (i, c) in conns.iter().enumerate() {
            if let Transport::Lazy(s) = &c.transport {
                epoll.add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
            }
        }
        Ok(LazyReader {
            epoll,
            events: vec![EpollEvent::empty(); conns.len().max(1)],
            scratch: vec![0; 64 * 1024],
            cmsg: nix::cmsg_space!(TimeSpec),
            realtime_base,
        })
    }

    /// Reads every reply that has arrived, first waiting up to `timeout`
    /// for one if none has. Retries writes a full socket refused earlier.
    fn poll(&mut self, conns: &[Rc<Conn>], st: &ThreadState, timeout: EpollTimeout) {
        for c in conns.iter().filter(|c| !c.out.borrow().is_empty()) {
            c.flush();
        }
        let n = match self.epoll.wait(&mut self.events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                for c in conns {
                    c.fail(format!("epoll failed: {e}"));
                }
                return;
            }
        };
        for i in 0..n {
            let conn = &conns[self.events[i].data() as usize];
            if let Err(why) = self.read(conn, st) {
                if let Transport::Lazy(s) = &conn.transport {
                    let _ = self.epoll.delete(s);
                }
                conn.fail(why);
            }
        }
    }

    /// Drains one socket; `Err` when the connection is over.
    fn read(&mut self, conn: &Conn, st: &ThreadState) -> Result<(), String> {
        let Transport::Lazy(sock) = &conn.transport else {
            return Ok(());
        };
        loop {
            let mut iov = [IoSliceMut::new(&mut self.scratch)];
            let flags = MsgFlags::MSG_DONTWAIT;
            let got = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut self.cmsg), flags);
            let (n, stamp) = match got {
                Ok(m) => (m.bytes, kernel_stamp(&m)),
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("read failed: {e}")),
            };
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            let now = st.now();
            // The kernel's arrival time, as ns since the start; never later
            // than now (a clock step would otherwise produce nonsense).
            let at = stamp.map_or(now, |t| {
                let ns = (t - self.realtime_base).num_nanoseconds();
                u64::try_from(ns).unwrap_or(now).min(now)
            });
            let mut inbuf = conn.inbuf.borrow_mut();
            inbuf.extend_from_slice(&self.scratch[..n]);
            take_replies(conn, st, &mut inbuf, at)?;
            if n < self.scratch.len() {
                return Ok(());
            }
        }
    }
}

/// The `SO_TIMESTAMPNS` receive time a `recvmsg` returned, if any.
fn kernel_stamp<S>(m: &nix::sys::socket::RecvMsg<'_, '_, S>) -> Option<TimeSpec> {
    m.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(t) => Some(t),
        _ => None,
    })
}

/// Everything one generator thread shares between its tasks.
struct ThreadState {
    base: Instant,
    kind: Kind,
    measure_from: u64,
    measure_to: u64,
    end: u64,
    on_time_ns: u64,
    latency: RefCell<Histogram<u64>>,
    lateness: RefCell<Histogram<u64>>,
    completed: Cell<u64>,
    errors: RefCell<ErrorTally>,
    sent: Cell<u64>,
    sent_on_time: Cell<u64>,
    /// SPIN requests encoded, and the service time they asked for in total.
    service_asked: Cell<(u64, u64)>,
    interval: Arc<Mutex<Interval>>,
    wl: Workload,
    rng: RefCell<SmallRng>,
    key_buf: RefCell<Vec<u8>>,
    values: Bytes,
    closed_loop: bool,
    /// A progress line is printed, so replies are also counted in `interval`.
    progress: bool,
    /// Replies name their request (ramkv, echo); else they come in order.
    replies_carry_ids: bool,
}

impl ThreadState {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn measured(&self, sched: u64) -> bool {
        (self.measure_from..self.measure_to).contains(&sched)
    }

    fn record(&self, sched: u64, at: u64, error: Option<&ReplyError>) {
        if !self.measured(sched) {
            return;
        }
        let d = at.saturating_sub(sched).max(1);
        match error {
            None => {
                let _ = self.latency.borrow_mut().record(d);
                self.completed.set(self.completed.get() + 1);
            }
            Some(e) => self.errors.borrow_mut().add(&e.status, &e.message, 1),
        }
        // The shared interval feeds only the progress line: without one,
        // skip its lock and second histogram on every reply.
        if self.progress {
            let mut iv = self.interval.lock().unwrap_or_else(|e| e.into_inner());
            if error.is_none() {
                let _ = iv.hist.record(d);
                iv.completed += 1;
            } else {
                iv.errors += 1;
            }
        }
    }

    /// Counts how late a request scheduled at `sched` leaves at `now`.
    fn record_send(&self, sched: u64, now: u64) {
        if !self.measured(sched) {
            return;
        }
        let late = now.saturating_sub(sched);
        let _ = self.lateness.borrow_mut().record(late.max(1));
        self.sent.set(self.sent.get() + 1);
        if late <= self.on_time_ns {
            self.sent_on_time.set(self.sent_on_time.get() + 1);
        }
    }

    /// Encodes one request scheduled at `sched` onto `conn` and sends it.
    fn send(&self, conn: &Conn, sched: u64) {
        if let Some(why) = conn.lost.borrow().as_deref() {
            if self.measured(sched) {
                self.errors.borrow_mut().add(DISCONNECTED, why, 1);
            }
            return;
        }
        self.encode(conn, sched);
        if !self.replies_carry_ids {
            conn.fifo.borrow_mut().push_back(sched);
        }
        conn.outstanding.set(conn.outstanding.get() + 1);
        conn.flush();
    }

    fn encode(&self, conn: &Conn, sched: u64) {
        let mut rng = self.rng.borrow_mut();
        let wl = &self.wl;
        let mut out = conn.out.borrow_mut();
        let id = sched + 1;
        if let Some(service) = &wl.service {
            let nanos = service.sample_ns(&mut *rng);
            let (n, sum) = self.service_asked.get();
            self.service_asked.set((n + 1, sum.saturating_add(nanos)));
            let op = Operation::Spin {
                nanos,
                sleep: wl.service_sleeps,
            };
            protocol::encode(self.kind, id, &op, &mut out);
            return;
        }
        let idx = wl.key_dist.sample(wl.keys, &mut *rng);
        let mut key = self.key_buf.borrow_mut();
        format_key(idx, wl.key_size, &mut key);
        let op = if rng.random_bool(wl.get_ratio.clamp(0.0, 1.0)) {
            Operation::Get { key: &key }
        } else {
            let n = wl.value_size.sample(&mut *rng);
            Operation::Set {
                key: &key,
                value: self.values.slice(..n.min(self.values.len())),
            }
        };
        protocol::encode(self.kind, id, &op, &mut out);
    }
}

/// Writes `key:000…idx`, exactly `size` bytes (digits only when too short).
pub fn format_key(idx: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let digits = size.saturating_sub(4).max(1);
    if size >= 5 {
        out.extend_from_slice(b"key:");
    }
    let _ = write!(out, "{idx:0digits$}");
    if out.len() > size.max(1) {
        let cut = out.len() - size.max(1);
        out.drain(..cut);
    }
}

/// Each connection's share of the load, summing to 1: `K` hot ones share
/// `F`, the rest share what is left (`--hot-conns K:F`). ramkv-sim weighs
/// its simulated connections with the same function.
pub fn conn_weights(n: usize, hot: Option<(usize, f64)>) -> Vec<f64> {
    let n = n.max(1);
    match hot {
        Some((k, f)) if k > 0 && k < n => (0..n)
            .map(|c| {
                if c < k {
                    f / k as f64
                } else {
                    (1.0 - f) / (n - k) as f64
                }
            })
            .collect(),
        _ => vec![1.0 / n as f64; n],
    }
}

/// Validates a workload against its target.
pub fn check(cfg: &RunConfig, wl: &Workload) -> Result<(), String> {
    if wl.service.is_some() && cfg.target.kind != Kind::Ramkv {
        return Err(
            "--service needs ramkv's SPIN op; memcache and redis targets cannot run it".into(),
        );
    }
    if wl.service_sleeps && wl.service.is_none() {
        return Err("--service-mode sleep needs --service".into());
    }
    if cfg.tls.is_some() && cfg.target.kind != Kind::Ramkv {
        return Err("--tls-ca applies to ramkv targets only".into());
    }
    if cfg.admin.is_some() && cfg.target.kind != Kind::Ramkv {
        return Err("--admin applies to ramkv targets only".into());
    }
    if cfg.place != crate::placement::Place::AsAccepted && cfg.admin.is_none() {
        return Err("--place even needs --admin (where the server says which dispatcher got each connection)".into());
    }
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
    }
    if cfg.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if let Some((k, f)) = wl.hot_conns
        && (k == 0 || k >= cfg.connections || !(0.0..=1.0).contains(&f))
    {
        return Err(format!(
            "--hot-conns {k}:{f}: need 0 < K < connections ({}) and 0 ≤ F ≤ 1",
            cfg.connections
        ));
    }
    if let Mode::Open { rate } = cfg.mode
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err("--rate must be a positive number".into());
    }
    if let Mode::Closed { concurrency: 0 } = cfg.mode {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(())
}

/// The longest a cold connection waits for other generator threads to place
/// the hot ones under [`Place::Even`](crate::placement::Place).
const HOT_PLACED_WITHIN: Duration = Duration::from_secs(60);

/// Opens one connection of the run. Under [`Place::Even`](crate::placement::Place)
/// it closes each one the server put where [`Steer`](crate::placement::Steer)
/// would not keep it and opens another, up to [`Steer::tries`](crate::placement::Steer::tries) times.
async fn open_placed(cfg: &RunConfig, shared: &Shared, hot: bool) -> Result<Link, String> {
    let open = || {
        connect(
            &cfg.target,
            cfg.auth_token.as_deref(),
            cfg.tls.as_ref(),
            cfg.connect_timeout,
        )
    };
    let (Some(steer), Some(admin)) = (&shared.steer, &cfg.admin) else {
        return open().await;
    };
    let lock = || steer.lock().unwrap_or_else(|e| e.into_inner());
    let tries = lock().tries();
    // Another generator thread may still be placing a hot connection.
    let until = Instant::now()
        + cfg
            .connect_timeout
            .saturating_mul(tries as u32)
            .min(HOT_PLACED_WITHIN);
    while !hot && lock().hot_pending() {
        let failed = shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if failed || Instant::now() >= until {
            return Err("--place even: the hot connections were not placed".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..tries {
        let link = open().await?;
        let local = link
            .local_addr()
            .ok_or("--place even: a connection without a local address")?;
        // Blocking, but nothing else runs on this thread before the start.
        let dispatcher = crate::placement::dispatcher_of(admin, local)?;
        if !lock().knows(dispatcher) {
            return Err(format!(
                "--place even: {admin} put a connection on dispatcher {dispatcher}, \
                 but its /metrics counts fewer dispatchers"
            ));
        }
        if lock().keep(dispatcher, hot) {
            return Ok(link);
        }
    }
    Err(format!(
        "--place even: no connection landed where it was needed in {tries} tries; \
         the server at {admin} does not spread new connections over its dispatchers"
    ))
}

/// Connects once, with the run's settings, and closes: a target that cannot
/// be reached fails the run within `connect_timeout`, with its address and
/// the cause, instead of after the whole run.
pub fn probe(cfg: &RunConfig) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(connect(
        &cfg.target,
        cfg.auth_token.as_deref(),
        cfg.tls.as_ref(),
        cfg.connect_timeout,
    ))
    .map(drop)
}

/// What every generator thread shares with the thread that runs them.
struct Shared {
    /// Every thread has connected (or failed to).
    ready: Barrier,
    /// The clock has started (or the run was called off).
    go: Barrier,
    /// The start: as an Instant, and on the monotonic and realtime clocks.
    start: OnceLock<(Instant, TimeSpec, TimeSpec)>,
    /// The first connect failure, which calls the run off.
    failure: Mutex<Option<String>>,
    /// Each connection's local address, by connection index.
    locals: Mutex<Vec<Option<std::net::SocketAddr>>>,
    /// Which connections to keep, under [`Place::Even`](crate::placement::Place).
    steer: Option<Mutex<crate::placement::Steer>>,
    abort: AtomicBool,
}

/// With [`RunConfig::admin`], how long a run waits for the server to close
/// every connection (the last run's backlog) before it starts.
pub const QUIET_WITHIN: Duration = Duration::from_secs(60);

/// Runs one measurement.
pub fn run(cfg: &RunConfig, wl: &Workload) -> Result<RunResult, String> {
    check(cfg, wl)?;
    if let Some(admin) = &cfg.admin {
        let open = crate::placement::wait_until_idle(admin, QUIET_WITHIN)?;
        if open > 0 {
            eprintln!(
                "warning: the server still had {open} connections open after {QUIET_WITHIN:?}; this run overlaps them"
            );
        }
    }
    probe(cfg)?;
    let steer = match (&cfg.admin, cfg.place) {
        (Some(admin), crate::placement::Place::Even) => {
            Some(Mutex::new(crate::placement::Steer::new(
                crate::placement::dispatchers(admin)?,
                wl.hot_conns.map_or(0, |(k, _)| k),
            )))
        }
        _ => None,
    };
    let threads = cfg.threads.min(cfg.connections);
    let weights = conn_weights(cfg.connections, wl.hot_conns);
    let values = Bytes::from(vec![b'x'; wl.value_size.max().max(1)]);
    let shared = Arc::new(Shared {
        ready: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        start: OnceLock::new(),
        failure: Mutex::new(None),
        locals: Mutex::new(vec![None; cfg.connections]),
        steer,
        abort: AtomicBool::new(false),
    });
    let intervals: Vec<Arc<Mutex<Interval>>> = (0..threads)
        .map(|_| {
            Arc::new(Mutex::new(Interval {
                hist: new_hist(),
                completed: 0,
                errors: 0,
            }))
        })
        .collect();
    let mut handles = Vec::new();
    for (t, interval) in intervals.iter().enumerate() {
        let conns: Vec<usize> = (0..cfg.connections).filter(|c| c % threads == t).collect();
        let (cfg, wl, values) = (cfg.clone(), wl.clone(), values.clone());
        let (shared, interval) = (shared.clone(), interval.clone());
        let weights = weights.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-gen-{t}"))
                .spawn(move || {
                    let w: Vec<(usize, f64)> = conns.iter().map(|&c| (c, weights[c])).collect();
                    generator_thread(t, cfg, wl, values, w, shared, interval)
                })
                .map_err(|e| format!("cannot start a generator thread: {e}"))?,
        );
    }
    shared.ready.wait();
    let mut failure = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Before the clock starts: the listing takes a round trip or a few.
    let placement = match (&cfg.admin, &failure) {
        (Some(admin), None) => {
            let locals = shared.locals.lock().unwrap_or_else(|e| e.into_inner());
            crate::placement::fetch(admin, &locals)
                .map_err(|e| failure = Some(e))
                .ok()
        }
        _ => None,
    };
    if failure.is_some() {
        shared.abort.store(true, Ordering::SeqCst);
    }
    // A server that cannot report it costs the run nothing.
    let service_before = cfg
        .admin
        .as_deref()
        .and_then(|a| crate::placement::service_time(a).ok());
    let cpu_before = CpuSample::process();
    let base = Instant::now();
    let clock =
        |id| nix::time::clock_gettime(id).map_err(|e| format!("cannot read the clock: {e}"));
    let base_ts = clock(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let realtime = clock(nix::time::ClockId::CLOCK_REALTIME)?;
    let _ = shared.start.set((base, base_ts, realtime));
    shared.go.wait();
    if let Some(f) = failure {
        for h in handles {
            let _ = h.join();
        }
        return Err(f);
    }
    if cfg.progress {
        progress_loop(base, cfg, &intervals);
    }
    let mut total = ThreadResult::empty();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "a generator thread panicked".to_string())??;
        total.merge(r)?;
    }
    let wall = base.elapsed().as_secs_f64();
    let cpu = CpuSample::process().since(&cpu_before);
    let server_service_us = match (&cfg.admin, service_before) {
        (Some(admin), Some(before)) => crate::placement::service_time(admin)
            .ok()
            .and_then(|after| crate::placement::mean_service_us(before, after)),
        _ => None,
    };
    Ok(RunResult {
        offered_rate: match cfg.mode {
            Mode::Open { rate } => rate,
            Mode::Closed { .. } => 0.0,
        },
        duration: cfg.duration,
        completed: total.completed,
        errors: total.errors,
        timeouts: total.timeouts,
        latency: total.latency,
        lateness: total.lateness,
        sent: total.sent,
        sent_on_time: total.sent_on_time,
        generator: GeneratorUsage {
            cpu_cores: cpu.cpu.as_secs_f64() / wall,
            busiest_thread: total.busiest_thread,
            preempted: total.preempted,
        },
        placement,
        server_service_us,
        requested_service_us: match total.service_asked {
            (0, _) => None,
            (n, sum) => Some(sum as f64 / n as f64 / 1e3),
        },
    })
}

fn progress_loop(base: Instant, cfg: &RunConfig, intervals: &[Arc<Mutex<Interval>>]) {
    let total = cfg.warmup + cfg.duration;
    let mut tick = 1;
    while base.elapsed() < total {
        std::thread::sleep(
            (base + Duration::from_secs(tick)).saturating_duration_since(Instant::now()),
        );
        let mut h = new_hist();
        let (mut done, mut errs) = (0, 0);
        for iv in intervals {
            let mut iv = iv.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.add(&iv.hist);
            iv.hist.reset();
            done += std::mem::take(&mut iv.completed);
            errs += std::mem::take(&mut iv.errors);
        }
        let phase = if Duration::from_secs(tick) <= cfg.warmup {
            " (warmup)"
        } else {
            ""
        };
        eprintln!(
            "[{tick:>3}s] {done:>9} req/s  p50 {:>8.1} us  p99 {:>8.1} us  errors {errs}{phase}",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
        );
        tick += 1;
    }
}

/// One thread's share of a run's results.
struct ThreadResult {
    latency: Histogram<u64>,
    lateness: Histogram<u64>,
    completed: u64,
    errors: ErrorTally,
    timeouts: u64,
    sent: u64,
    sent_on_time: u64,
    service_asked: (u64, u64),
    busiest_thread: f64,
    preempted: u64,
}

impl ThreadResult {
    fn empty() -> ThreadResult {
        ThreadResult {
            latency: new_hist(),
            lateness: new_hist(),
            completed: 0,
            errors: ErrorTally::default(),
            timeouts: 0,
            sent: 0,
            sent_on_time: 0,
            service_asked: (0, 0),
            busiest_thread: 0.0,
            preempted: 0,
        }
    }

    fn merge(&mut self, r: ThreadResult) -> Result<(), String> {
        self.latency.add(&r.latency).map_err(|e| e.to_string())?;
        self.lateness.add(&r.lateness).map_err(|e| e.to_string())?;
        self.completed += r.completed;
        self.errors.merge(&r.errors);
        self.timeouts += r.timeouts;
        self.sent += r.sent;
        self.sent_on_time += r.sent_on_time;
        self.service_asked.0 += r.service_asked.0;
        self.service_asked.1 = self.service_asked.1.saturating_add(r.service_asked.1);
        self.busiest_thread = self.busiest_thread.max(r.busiest_thread);
        self.preempted += r.preempted;
        Ok(())
    }
}

fn generator_thread(
    t: usize,
    cfg: RunConfig,
    wl: Workload,
    values: Bytes,
    conns: Vec<(usize, f64)>,
    shared: Arc<Shared>,
    interval: Arc<Mutex<Interval>>,
) -> Result<ThreadResult, String> {
    // Each connection's index in the run, and its share of the load.
    let (indices, weights): (Vec<usize>, Vec<f64>) = conns.into_iter().unzip();
    minimal_timer_slack();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // Connect everything before the clock starts.
        let mut links = Vec::new();
        for &index in &indices {
            let hot = wl.hot_conns.is_some_and(|(k, _)| index < k);
            match open_placed(&cfg, &shared, hot).await {
                Ok(l) => {
                    let mut locals = shared.locals.lock().unwrap_or_else(|e| e.into_inner());
                    locals[index] = l.local_addr();
                    links.push(l);
                }
                Err(e) => {
                    let mut f = shared.failure.lock().unwrap_or_else(|e| e.into_inner());
                    f.get_or_insert(e);
                    break;
                }
            }
        }
        shared.ready.wait();
        shared.go.wait();
        if shared.abort.load(Ordering::SeqCst) {
            return Ok(ThreadResult::empty());
        }
        let &(base, base_ts, realtime) = shared.start.get().ok_or("start time missing")?;
        let cpu_start = CpuSample::thread();
        let warm = cfg.warmup.as_nanos() as u64;
        let end = warm + cfg.duration.as_nanos() as u64;
        let st = Rc::new(ThreadState {
            base,
            kind: cfg.target.kind,
            measure_from: warm,
            measure_to: end,
            end,
            on_time_ns: cfg.on_time.as_nanos() as u64,
            latency: RefCell::new(new_hist()),
            lateness: RefCell::new(new_hist()),
            completed: Cell::new(0),
            errors: RefCell::new(ErrorTally::default()),
            sent: Cell::new(0),
            sent_on_time: Cell::new(0),
            service_asked: Cell::new((0, 0)),
            interval,
            wl,
            rng: RefCell::new(SmallRng::seed_from_u64(
                cfg.seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            key_buf: RefCell::new(Vec::with_capacity(64)),
            values,
            closed_loop: matches!(cfg.mode, Mode::Closed { .. }),
            progress: cfg.progress,
            replies_carry_ids: cfg.target.replies_carry_ids(),
        });
        let open_loop = matches!(cfg.mode, Mode::Open { .. });
        let mut conns = Vec::new();
        let mut tasks = Vec::new();
        for link in links {
            let conn = match link {
                Link::Tcp(stream) if open_loop => Rc::new(Conn::new(lazy_transport(stream)?)),
                Link::Tcp(stream) => {
                    let (rd, wr) = stream.into_split();
                    let conn = Rc::new(Conn::new(Transport::Tcp(wr)));
                    tasks.push(tokio::task::spawn_local(tcp_writer(conn.clone())));
                    let rd = Box::new(rd);
                    tasks.push(tokio::task::spawn_local(reader(
                        conn.clone(),
                        rd,
                        st.clone(),
                    )));
                    conn
                }
                Link::Stream { rd, wr, .. } => {
                    let conn = Rc::new(Conn::new(Transport::Stream));
                    tasks.push(tokio::task::spawn_local(stream_writer(conn.clone(), wr)));
                    tasks.push(tokio::task::spawn_local(reader(
                        conn.clone(),
                        rd,
                        st.clone(),
                    )));
                    conn
                }
            };
            conns.push(conn);
        }
        let lazy = conns
            .iter()
            .any(|c| matches!(c.transport, Transport::Lazy(_)));
        let mut lazy_reader = match lazy {
            true => Some(
                LazyReader::new(&conns, realtime)
                    .map_err(|e| format!("cannot create an epoll set: {e}"))?,
            ),
            false => None,
        };
        match cfg.mode {
            Mode::Open { rate } => {
                let total_weight: f64 = weights.iter().sum();
                let pacer = Pacer::new(cfg.pacing, base_ts, lazy)
                    .map_err(|e| format!("cannot create the pacing timer: {e}"))?;
                let schedule = Schedule {
                    st: &st,
                    conns: &conns,
                    pacer: &pacer,
                };
                schedule
                    .run(&weights, rate * total_weight, &mut lazy_reader)
                    .await?;
            }
            Mode::Closed { concurrency } => {
                let now = st.now();
                for c in &conns {
                    for _ in 0..concurrency {
                        st.send(c, now);
                    }
                }
                tokio::time::sleep(Duration::from_nanos(st.end.saturating_sub(st.now()))).await;
            }
        }
        let used = CpuSample::thread().since(&cpu_start);
        let busy = used.cpu.as_secs_f64() / base.elapsed().as_secs_f64().max(1e-9);
        drain(&conns, &st, &mut lazy_reader, cfg.drain).await;
        for task in tasks {
            task.abort();
        }
        let mut errors = st.errors.take();
        let mut timeouts = 0;
        for c in &conns {
            match c.lost.borrow().as_deref() {
                Some(why) => errors.add(DISCONNECTED, why, c.outstanding.get()),
                None => timeouts += c.outstanding.get(),
            }
        }
        Ok(ThreadResult {
            latency: st.latency.replace(new_hist()),
            lateness: st.lateness.replace(new_hist()),
            completed: st.completed.get(),
            errors,
            timeouts,
            sent: st.sent.get(),
            sent_on_time: st.sent_on_time.get(),
            service_asked: st.service_asked.get(),
            busiest_thread: busy,
            preempted: used.preempted,
        })
    })
}

/// Waits for replies to what was sent on live connections, up to `limit`.
async fn drain(
    conns: &[Rc<Conn>],
    st: &ThreadState,
    lazy_reader: &mut Option<LazyReader>,
    limit: Duration,
) {
    let until = Instant::now() + limit;
    while conns.iter().any(|c| c.alive() && c.outstanding.get() > 0) && Instant::now() < until {
        match lazy_reader {
            // Nothing else runs on this thread: block in epoll for the replies.
            Some(r) => r.poll(conns, st, EpollTimeout::from(10u8)),
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Turns a connected plain TCP stream into a [`Transport::Lazy`] one: out of
/// the runtime, non-blocking, with kernel receive timestamps.
fn lazy_transport(stream: TcpStream) -> Result<Transport, String> {
    let s = stream
        .into_std()
        .map_err(|e| format!("cannot take the socket out of the runtime: {e}"))?;
    setsockopt(&s, sockopt::ReceiveTimestampns, &true)
        .map_err(|e| format!("cannot enable receive timestamps: {e}"))?;
    Ok(Transport::Lazy(s))
}

/// One thread's open loop.
struct Schedule<'a> {
    st: &'a ThreadState,
    conns: &'a [Rc<Conn>],
    pacer: &'a Pacer,
}

impl Schedule<'_> {
    /// Walks a Poisson schedule at `rate` until the end of the run.
    async fn run(
        &self,
        weights: &[f64],
        rate: f64,
        lazy_reader: &mut Option<LazyReader>,
    ) -> Result<(), String> {
        let st = self.st;
        let total: f64 = weights.iter().sum();
        let cumulative: Vec<f64> = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        let mut next = poisson_gap_ns(rate, &mut *st.rng.borrow_mut());
        while (next as u64) < st.end {
            self.pacer
                .until(next as u64, || st.now())
                .await
                .map_err(|e| format!("pacing timer failed: {e}"))?;
            let now = st.now();
            while (next as u64) <= now && (next as u64) < st.end {
                let sched = next as u64;
                st.record_send(sched, now);
                let u: f64 = st.rng.borrow_mut().random();
                let c = cumulative
                    .partition_point(|&x| x < u)
                    .min(self.conns.len() - 1);
                st.send(&self.conns[c], sched);
                next += poisson_gap_ns(rate, &mut *st.rng.borrow_mut());
            }
            self.take_replies(lazy_reader, next as u64).await;
        }
        Ok(())
    }

    /// Lets the replies that arrived be read: directly for lazy sockets;
    /// for runtime sockets by yielding to their readers, unless the next
    /// wait yields anyway (one that is spun through does not).
    async fn take_replies(&self, lazy_reader: &mut Option<LazyReader>, next: u64) {
        match lazy_reader {
            Some(r) => r.poll(self.conns, self.st, EpollTimeout::ZERO),
            None if self.pacer.spins_through(next.saturating_sub(self.st.now())) => {
                tokio::task::yield_now().await
            }
            None => {}
        }
    }
}

/// Finishes, for a plain TCP connection, what the socket would not take at once.
async fn tcp_writer(conn: Rc<Conn>) {
    let Transport::Tcp(tcp) = &conn.transport else {
        return;
    };
    loop {
        conn.wake.notified().await;
        while conn.backlog.get() {
            if let Err(e) = tcp.writable().await {
                conn.fail(format!("write failed: {e}"));
                return;
            }
            match write_now(&mut TryWrite(tcp), &mut conn.out.borrow_mut()) {
                Ok(true) => conn.backlog.set(false),
                Ok(false) => {}
                Err(e) => {
                    conn.fail(format!("write failed: {e}"));
                    return;
                }
            }
        }
    }
}

/// Writes everything buffered for a TLS connection.
async fn stream_writer(conn: Rc<Conn>, mut wr: Box<dyn AsyncWrite + Unpin + Send>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        conn.wake.notified().await;
        std::mem::swap(&mut *conn.out.borrow_mut(), &mut buf);
        if buf.is_empty() {
            continue;
        }
        // flush: under TLS, write_all may leave records buffered in rustls.
        let written = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        if let Err(e) = written.await {
            conn.fail(format!("write failed: {e}"));
            return;
        }
        buf.clear();
    }
}

/// Reads replies for a runtime connection, timing each when it is read.
async fn reader(conn: Rc<Conn>, mut rd: Box<dyn AsyncRead + Unpin + Send>, st: Rc<ThreadState>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let why = loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "the server closed the connection".to_string(),
            Err(e) => break format!("read failed: {e}"),
            Ok(_) => {}
        }
        let now = st.now();
        if let Err(e) = take_replies(&conn, &st, &mut buf, now) {
            break e;
        }
    };
    conn.fail(why);
}

/// Matches every complete reply in `buf`, which arrived at `at`, to its request.
fn take_replies(conn: &Conn, st: &ThreadState, buf: &mut BytesMut, at: u64) -> Result<(), String> {
    while let Some(reply) = protocol::parse(st.kind, buf).map_err(|e| e.to_string())? {
        let sched = if st.replies_carry_ids {
            reply.id.saturating_sub(1)
        } else {
            conn.fifo.borrow_mut().pop_front().unwrap_or(at)
        };
        conn.outstanding
            .set(conn.outstanding.get().saturating_sub(1));
        st.record(sched, at, reply.error.as_ref());
        if st.closed_loop && at < st.end {
            st.send(conn, st.now());
        }
    }
    Ok(())
}

/// A connected, authenticated link to the target.
pub enum Link {
    /// Plain TCP, written to directly.
    Tcp(TcpStream),
    /// Anything else (TLS): both halves as streams.
    Stream {
        /// The reading half.
        rd: Box<dyn AsyncRead + Unpin + Send>,
        /// The writing half.
        wr: Box<dyn AsyncWrite + Unpin + Send>,
        /// The local address of the TCP connection underneath.
        local: Option<std::net::SocketAddr>,
    },
}

impl Link {
    /// The local address of the TCP connection.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Link::Tcp(s) => s.local_addr().ok(),
            Link::Stream { local, .. } => *local,
        }
    }

    /// Both halves as streams, whatever the transport.
    pub fn into_halves(
        self,
    ) -> (
        Box<dyn AsyncRead + Unpin + Send>,
        Box<dyn AsyncWrite + Unpin + Send>,
    ) {
        match self {
            Link::Tcp(s) => {
                let (rd, wr) = s.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Link::Stream { rd, wr, .. } => (rd, wr),
        }
    }
}

/// Connects to `target`, within `timeout`, and for ramkv with a token,
/// authenticates. The error names the address and the cause.
pub async fn connect(
    target: &Target,
    token: Option<&[u8]>,
    tls: Option<&TlsConnector>,
    timeout: Duration,
) -> Result<Link, String> {
    let fail = |why: String| format!("cannot connect to {}: {why}", target.addr);
    tokio::time::timeout(timeout, connect_inner(target, token, tls))
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
        .map_err(fail)
}

async fn connect_inner(
    target: &Target,
    token: Option<&[u8]>,
    tls: Option<&TlsConnector>,
) -> Result<Link, String> {
    let mut tcp = TcpStream::connect(&target.addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let Some(connector) = tls else {
        if let (Some(token), Kind::Ramkv) = (token, target.kind) {
            authenticate(&mut tcp, token).await?;
        }
        return Ok(Link::Tcp(tcp));
    };
    let name = ramkv_client::tls::server_name(&target.addr)?;
    let mut stream = ramkv_client::tls::handshake(connector, name, &target.addr, tcp).await?;
    if let (Some(token), Kind::Ramkv) = (token, target.kind) {
        authenticate(&mut stream, token).await?;
    }
    let (rd, wr) = tokio::io::split(stream);
    Ok(Link::Stream {
        local,
        rd: Box::new(rd),
        wr: Box::new(wr),
    })
}

/// Sends AUTH and waits for its reply.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &[u8],
) -> Result<(), String> {
    let req = ramkv_proto::Request {
        id: 1,
        op: Some(ramkv_proto::request::Op::Auth(ramkv_proto::Auth {
            token: Bytes::copy_from_slice(token),
        })),
    };
    let mut out = BytesMut::new();
    ramkv_proto::encode_frame(&req, &mut out).map_err(|e| format!("auth: {e}"))?;
    s.write_all(&out).await.map_err(|e| format!("auth: {e}"))?;
    // The reply is awaited next: under TLS the request must not stay buffered.
    s.flush().await.map_err(|e| format!("auth: {e}"))?;
    let mut inb = BytesMut::new();
    loop {
        if let Some(reply) = protocol::parse(Kind::Ramkv, &mut inb).map_err(|e| e.to_string())? {
            return match reply.error {
                None => Ok(()),
                Some(e) => Err(format!("authentication refused: {}", e.message)),
            };
        }
        if s.read_buf(&mut inb)
            .await
            .map_err(|e| format!("auth: {e}"))?
            == 0
        {
            return Err("the server closed the connection during AUTH".into());
        }
    }
}

/// Stores every key once, so GETs hit. Pipelines `window` SETs per connection.
pub async fn preload(cfg: &RunConfig, wl: &Workload) -> Result<(), String> {
    let window = 256usize;
    let mut tasks = tokio::task::JoinSet::new();
    let connections = cfg.connections.clamp(1, 8) as u64;
    for c in 0..connections {
        let (cfg, wl) = (cfg.clone(), wl.clone());
        tasks.spawn(async move {
            let link = connect(
                &cfg.target,
                cfg.auth_token.as_deref(),
                cfg.tls.as_ref(),
                cfg.connect_timeout,
            )
            .await
            .map_err(|e| format!("preload: {e}"))?;
            let (mut rd, mut wr) = link.into_halves();
            let values = Bytes::from(vec![b'x'; wl.value_size.max().max(1)]);
            let mut rng = SmallRng::seed_from_u64(c);
            let mut key = Vec::new();
            let (mut out, mut inb) = (BytesMut::new(), BytesMut::new());
            let mine: Vec<u64> = (c..wl.keys).step_by(connections as usize).collect();
            for chunk in mine.chunks(window) {
                for &k in chunk {
                    format_key(k, wl.key_size, &mut key);
                    let n = wl.value_size.sample(&mut rng).min(values.len());
                    let op = Operation::Set {
                        key: &key,
                        value: values.slice(..n),
                    };
                    protocol::encode(cfg.target.kind, k + 1, &op, &mut out);
                }
                wr.write_all(&out)
                    .await
                    .map_err(|e| format!("preload: {e}"))?;
                wr.flush().await.map_err(|e| format!("preload: {e}"))?;
                out.clear();
                let mut got = 0;
                while got < chunk.len() {
                    match protocol::parse(cfg.target.kind, &mut inb)
                        .map_err(|e| format!("preload: {e}"))?
                    {
                        Some(r) => match r.error {
                            None => got += 1,
                            Some(e) => {
                                return Err(format!(
                                    "preload: the server refused a SET: {} {}",
                                    e.status, e.message
                                ));
                            }
                        },
                        None => {
                            if rd
                                .read_buf(&mut inb)
                                .await
                                .map_err(|e| format!("preload: {e}"))?
                                == 0
                            {
                                return Err("preload: the server closed the connection".into());
                            }
                        }
                    }
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size() {
        let mut k = Vec::new();
        format_key(42, 16, &mut k);
        assert_eq!(k, b"key:000000000042");
        format_key(123456, 3, &mut k);
        assert_eq!(k, b"456");
    }

    #[test]
    fn hot_connection_weights() {
        let w = conn_weights(10, Some((2, 0.8)));
        assert!((w[0] - 0.4).abs() < 1e-9 && (w[9] - 0.025).abs() < 1e-9);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn errors_are_counted_by_status_with_the_first_message() {
        let mut a = ErrorTally::default();
        a.add("INVALID_REQUEST", "SPIN is disabled", 3);
        a.add("INVALID_REQUEST", "another message", 2);
        let mut b = ErrorTally::default();
        b.add("OVERLOADED", "queue full", 1);
        b.add("INVALID_REQUEST", "later", 1);
        a.merge(&b);
        assert_eq!(a.total(), 7);
        assert_eq!(
            a.by_count(),
            [
                ("INVALID_REQUEST", 6, "SPIN is disabled"),
                ("OVERLOADED", 1, "queue full")
            ]
        );
    }
}
