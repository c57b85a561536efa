//! The load engine.
//!
//! Each generator thread runs a tokio `current_thread` runtime that owns its
//! share of the connections. In open loop, a scheduler task walks a Poisson
//! schedule and, for every arrival, encodes the request into the chosen
//! connection's buffer for that connection's writer task. **A request's
//! latency runs from its scheduled time**, not from when it was written, so
//! a stalled server (or a generator that fell behind) shows in the numbers
//! instead of silently lowering the offered rate. The scheduler records its
//! own lateness, so a slow generator is flagged rather than blamed on the
//! server.
//!
//! ramkv replies carry the request id, and the engine uses the scheduled
//! time (ns since start, plus one) *as* the id, so matching a reply costs
//! nothing. memcache and Redis reply in order, so they use a FIFO of
//! scheduled times per connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::dist::{KeyDist, ServiceDist, SizeDist, poisson_gap_ns};
use super::protocol::{self, Kind, Operation, Target};

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
    /// When set, every request is ramkv's SPIN with a service time drawn from it.
    pub service: Option<ServiceDist>,
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
    /// A run whose p99 send lateness exceeds this is flagged `generator_late`.
    pub late_threshold: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// ramkv's shared secret, sent as AUTH on every connection first.
    pub auth_token: Option<Vec<u8>>,
    /// Connect with TLS (ramkv targets).
    pub tls: Option<TlsConnector>,
    /// Seed for every random choice, so runs are repeatable.
    pub seed: u64,
}

/// What a run measured.
pub struct RunResult {
    /// Requests per second asked for (0 in closed loop).
    pub offered_rate: f64,
    /// Successful replies per second to requests scheduled in the measured window.
    pub achieved_rate: f64,
    /// Successful replies to requests scheduled in the measured window.
    pub completed: u64,
    /// Error replies in the measured window.
    pub errors: u64,
    /// Requests still unanswered after the drain.
    pub timeouts: u64,
    /// Latency in ns, from scheduled send to reply.
    pub latency: Histogram<u64>,
    /// How far behind schedule requests were sent, in ns.
    pub lateness: Histogram<u64>,
    /// True when the p99 send lateness passed the threshold.
    pub generator_late: bool,
    /// CPU seconds the generator process used during the run, per wall second.
    pub generator_cpu: f64,
}

fn new_hist() -> Histogram<u64> {
    // Auto-resizing, 3 significant digits: 0.1% resolution at any latency.
    let mut h = Histogram::new(3).expect("3 significant figures is a valid precision");
    h.auto(true);
    h
}

/// Live counts for the progress line, shared with the reporting thread.
struct Interval {
    hist: Histogram<u64>,
    completed: u64,
    errors: u64,
}

/// One connection of a generator thread.
struct Conn {
    out: RefCell<BytesMut>,
    wake: Notify,
    /// Scheduled times of requests awaiting in-order replies.
    fifo: RefCell<VecDeque<u64>>,
    outstanding: Cell<u64>,
    alive: Cell<bool>,
}

/// Everything one generator thread shares between its tasks.
struct ThreadState {
    base: Instant,
    kind: Kind,
    measure_from: u64,
    measure_to: u64,
    end: u64,
    latency: RefCell<Histogram<u64>>,
    lateness: RefCell<Histogram<u64>>,
    completed: Cell<u64>,
    errors: Cell<u64>,
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

    fn record(&self, sched: u64, now: u64, ok: bool) {
        if sched < self.measure_from || sched >= self.measure_to {
            return;
        }
        let d = now.saturating_sub(sched).max(1);
        if ok {
            let _ = self.latency.borrow_mut().record(d);
            self.completed.set(self.completed.get() + 1);
        } else {
            self.errors.set(self.errors.get() + 1);
        }
        // The shared interval feeds only the progress line: without one,
        // skip its lock and second histogram on every reply.
        if self.progress {
            let mut iv = self.interval.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                let _ = iv.hist.record(d);
                iv.completed += 1;
            } else {
                iv.errors += 1;
            }
        }
    }

    /// Encodes one request scheduled at `sched` onto `conn`.
    fn send(&self, conn: &Conn, sched: u64) {
        if !conn.alive.get() {
            return;
        }
        let mut rng = self.rng.borrow_mut();
        let wl = &self.wl;
        let mut out = conn.out.borrow_mut();
        let id = sched + 1;
        if let Some(service) = &wl.service {
            protocol::encode(
                self.kind,
                id,
                &Operation::Spin {
                    nanos: service.sample_ns(&mut *rng),
                },
                &mut out,
            );
        } else {
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
        if !self.replies_carry_ids {
            conn.fifo.borrow_mut().push_back(sched);
        }
        conn.outstanding.set(conn.outstanding.get() + 1);
        drop(out);
        conn.wake.notify_one();
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

/// Connection weights for `(K, F)` hot connections, summing to 1.
fn conn_weights(n: usize, hot: Option<(usize, f64)>) -> Vec<f64> {
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

/// CPU seconds (user + system) this process has used, from /proc.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// Validates a workload against its target.
pub fn check(cfg: &RunConfig, wl: &Workload) -> Result<(), String> {
    if wl.service.is_some() && cfg.target.kind != Kind::Ramkv {
        return Err(
            "--service needs ramkv's SPIN op; memcache and redis targets cannot run it".into(),
        );
    }
    if cfg.tls.is_some() && cfg.target.kind != Kind::Ramkv {
        return Err("--tls-ca applies to ramkv targets only".into());
    }
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
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
        && (rate.is_nan() || rate <= 0.0)
    {
        return Err("--rate must be positive".into());
    }
    Ok(())
}

/// Runs one measurement.
pub fn run(cfg: &RunConfig, wl: &Workload) -> Result<RunResult, String> {
    check(cfg, wl)?;
    let threads = cfg.threads.min(cfg.connections);
    let weights = conn_weights(cfg.connections, wl.hot_conns);
    let values = Bytes::from(vec![b'x'; wl.value_size.max().max(1)]);
    let ready = Arc::new(Barrier::new(threads + 1));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let go = Arc::new(Barrier::new(threads + 1));
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
        let w: Vec<f64> = conns.iter().map(|&c| weights[c]).collect();
        let (cfg, wl, values) = (cfg.clone(), wl.clone(), values.clone());
        let (ready, go, start, interval) =
            (ready.clone(), go.clone(), start.clone(), interval.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-gen-{t}"))
                .spawn(move || generator_thread(t, cfg, wl, values, w, ready, go, start, interval))
                .map_err(|e| format!("cannot start a generator thread: {e}"))?,
        );
    }
    ready.wait();
    let cpu_before = process_cpu_seconds();
    let _ = start.set(Instant::now());
    go.wait();
    let base = *start.get().expect("set just above");
    if cfg.progress {
        progress_loop(base, cfg, &intervals);
    }
    let mut latency = new_hist();
    let mut lateness = new_hist();
    let (mut completed, mut errors, mut timeouts) = (0, 0, 0);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| "a generator thread panicked".to_string())??;
        latency.add(&r.latency).map_err(|e| e.to_string())?;
        lateness.add(&r.lateness).map_err(|e| e.to_string())?;
        completed += r.completed;
        errors += r.errors;
        timeouts += r.timeouts;
    }
    let wall = base.elapsed().as_secs_f64();
    let cpu = (process_cpu_seconds() - cpu_before) / wall;
    let offered_rate = match cfg.mode {
        Mode::Open { rate } => rate,
        Mode::Closed { .. } => 0.0,
    };
    let generator_late = lateness.value_at_quantile(0.99) > cfg.late_threshold.as_nanos() as u64;
    Ok(RunResult {
        offered_rate,
        achieved_rate: completed as f64 / cfg.duration.as_secs_f64(),
        completed,
        errors,
        timeouts,
        latency,
        lateness,
        generator_late,
        generator_cpu: cpu,
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

struct ThreadResult {
    latency: Histogram<u64>,
    lateness: Histogram<u64>,
    completed: u64,
    errors: u64,
    timeouts: u64,
}

#[allow(clippy::too_many_arguments)]
fn generator_thread(
    t: usize,
    cfg: RunConfig,
    wl: Workload,
    values: Bytes,
    weights: Vec<f64>,
    ready: Arc<Barrier>,
    go: Arc<Barrier>,
    start: Arc<OnceLock<Instant>>,
    interval: Arc<Mutex<Interval>>,
) -> Result<ThreadResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // Connect everything before the clock starts.
        let mut streams = Vec::new();
        let mut failure = None;
        for _ in &weights {
            match connect(&cfg.target, cfg.auth_token.as_deref(), cfg.tls.as_ref()).await {
                Ok(s) => streams.push(s),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        ready.wait();
        go.wait();
        if let Some(f) = failure {
            return Err(f);
        }
        let base = *start.get().ok_or("start time missing")?;
        let warm = cfg.warmup.as_nanos() as u64;
        let st = Rc::new(ThreadState {
            base,
            kind: cfg.target.kind,
            measure_from: warm,
            measure_to: warm + cfg.duration.as_nanos() as u64,
            end: warm + cfg.duration.as_nanos() as u64,
            latency: RefCell::new(new_hist()),
            lateness: RefCell::new(new_hist()),
            completed: Cell::new(0),
            errors: Cell::new(0),
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
        let conns: Vec<Rc<Conn>> = streams
            .iter()
            .map(|_| {
                Rc::new(Conn {
                    out: RefCell::new(BytesMut::with_capacity(16 * 1024)),
                    wake: Notify::new(),
                    fifo: RefCell::new(VecDeque::new()),
                    outstanding: Cell::new(0),
                    alive: Cell::new(true),
                })
            })
            .collect();
        let mut tasks = Vec::new();
        for (stream, conn) in streams.into_iter().zip(&conns) {
            let Link { rd, wr } = stream;
            tasks.push(tokio::task::spawn_local(writer(conn.clone(), wr)));
            tasks.push(tokio::task::spawn_local(reader(
                conn.clone(),
                rd,
                st.clone(),
            )));
        }
        match cfg.mode {
            Mode::Open { rate } => {
                let total_weight: f64 = weights.iter().sum();
                schedule_open(&st, &conns, &weights, rate * total_weight).await
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
        // Drain: wait for replies to what was sent, up to the limit.
        let drain_until = Instant::now() + cfg.drain;
        while conns
            .iter()
            .any(|c| c.alive.get() && c.outstanding.get() > 0)
            && Instant::now() < drain_until
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let timeouts = conns.iter().map(|c| c.outstanding.get()).sum();
        for task in tasks {
            task.abort();
        }
        Ok(ThreadResult {
            latency: st.latency.replace(new_hist()),
            lateness: st.lateness.replace(new_hist()),
            completed: st.completed.get(),
            errors: st.errors.get(),
            timeouts,
        })
    })
}

/// Walks a Poisson schedule at `rate` until the end of the run.
async fn schedule_open(st: &ThreadState, conns: &[Rc<Conn>], weights: &[f64], rate: f64) {
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut next = poisson_gap_ns(rate, &mut *st.rng.borrow_mut());
    loop {
        let now = st.now();
        if now >= st.end {
            return;
        }
        while (next as u64) <= now && (next as u64) < st.end {
            let sched = next as u64;
            let _ = st.lateness.borrow_mut().record((now - sched).max(1));
            let u: f64 = st.rng.borrow_mut().random();
            let c = cumulative.partition_point(|&x| x < u).min(conns.len() - 1);
            st.send(&conns[c], sched);
            next += poisson_gap_ns(rate, &mut *st.rng.borrow_mut());
        }
        let wait = (next as u64).saturating_sub(st.now());
        if wait > 2_000_000 {
            // Timers are coarse (1 ms); wake early and spin the rest.
            tokio::time::sleep(Duration::from_nanos(wait - 1_500_000)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn writer(conn: Rc<Conn>, mut wr: Box<dyn AsyncWrite + Unpin + Send>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        conn.wake.notified().await;
        std::mem::swap(&mut *conn.out.borrow_mut(), &mut buf);
        if buf.is_empty() {
            continue;
        }
        // flush: under TLS, write_all may leave records buffered in rustls.
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            conn.alive.set(false);
            return;
        }
        buf.clear();
    }
}

async fn reader(conn: Rc<Conn>, mut rd: Box<dyn AsyncRead + Unpin + Send>, st: Rc<ThreadState>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = st.now();
        loop {
            let reply = match protocol::parse(st.kind, &mut buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("ramkv-bench: {e}; dropping the connection");
                    conn.alive.set(false);
                    return;
                }
            };
            let sched = if st.replies_carry_ids {
                reply.id.saturating_sub(1)
            } else {
                conn.fifo.borrow_mut().pop_front().unwrap_or(now)
            };
            conn.outstanding
                .set(conn.outstanding.get().saturating_sub(1));
            st.record(sched, now, reply.ok);
            if st.closed_loop && now < st.end {
                st.send(&conn, st.now());
            }
        }
    }
    conn.alive.set(false);
}

/// Connects to `target` and, for ramkv with a token, authenticates.
pub async fn connect(
    target: &Target,
    token: Option<&[u8]>,
    tls: Option<&TlsConnector>,
) -> Result<Link, String> {
    let tcp = TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut s = match tls {
        Some(connector) => {
            let (rd, wr) =
                tokio::io::split(ramkv_client::tls::handshake(connector, &target.addr, tcp).await?);
            Link {
                rd: Box::new(rd),
                wr: Box::new(wr),
            }
        }
        None => {
            let (rd, wr) = tcp.into_split();
            Link {
                rd: Box::new(rd),
                wr: Box::new(wr),
            }
        }
    };
    if let (Some(token), Kind::Ramkv) = (token, target.kind) {
        let req = ramkv_proto::Request {
            id: 1,
            op: Some(ramkv_proto::request::Op::Auth(ramkv_proto::Auth {
                token: Bytes::copy_from_slice(token),
            })),
        };
        let mut out = BytesMut::new();
        bytes::BufMut::put_u32(&mut out, prost::Message::encoded_len(&req) as u32);
        let _ = prost::Message::encode(&req, &mut out);
        s.wr.write_all(&out)
            .await
            .map_err(|e| format!("auth: {e}"))?;
        // The reply is awaited next: under TLS the request must not stay buffered.
        s.wr.flush().await.map_err(|e| format!("auth: {e}"))?;
        let mut header = [0u8; 4];
        s.rd.read_exact(&mut header)
            .await
            .map_err(|e| format!("auth: {e}"))?;
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        s.rd.read_exact(&mut body)
            .await
            .map_err(|e| format!("auth: {e}"))?;
        let resp: ramkv_proto::Response =
            prost::Message::decode(&body[..]).map_err(|e| format!("auth: {e}"))?;
        if resp.status != ramkv_proto::Status::Ok as i32 {
            return Err(format!("authentication refused: {}", resp.message));
        }
    }
    Ok(s)
}

/// Both directions of one connection, plain or TLS.
pub struct Link {
    /// The reading half.
    pub rd: Box<dyn AsyncRead + Unpin + Send>,
    /// The writing half.
    pub wr: Box<dyn AsyncWrite + Unpin + Send>,
}

/// Stores every key once, so GETs hit. Pipelines `window` SETs per connection.
pub async fn preload(
    target: &Target,
    wl: &Workload,
    connections: usize,
    token: Option<&[u8]>,
    tls: Option<&TlsConnector>,
) -> Result<(), String> {
    let window = 256u64;
    let mut tasks = tokio::task::JoinSet::new();
    let connections = connections.clamp(1, 8) as u64;
    for c in 0..connections {
        let (target, wl, token) = (target.clone(), wl.clone(), token.map(<[u8]>::to_vec));
        let tls = tls.cloned();
        tasks.spawn(async move {
            let mut s = connect(&target, token.as_deref(), tls.as_ref())
                .await
                .map_err(|e| format!("preload: {e}"))?;
            let values = Bytes::from(vec![b'x'; wl.value_size.max().max(1)]);
            let mut rng = SmallRng::seed_from_u64(c);
            let mut key = Vec::new();
            let (mut out, mut inb) = (BytesMut::new(), BytesMut::new());
            let mine: Vec<u64> = (c..wl.keys).step_by(connections as usize).collect();
            for chunk in mine.chunks(window as usize) {
                for &k in chunk {
                    format_key(k, wl.key_size, &mut key);
                    let n = wl.value_size.sample(&mut rng).min(values.len());
                    protocol::encode(
                        target.kind,
                        k + 1,
                        &Operation::Set {
                            key: &key,
                            value: values.slice(..n),
                        },
                        &mut out,
                    );
                }
                s.wr.write_all(&out)
                    .await
                    .map_err(|e| format!("preload: {e}"))?;
                s.wr.flush().await.map_err(|e| format!("preload: {e}"))?;
                out.clear();
                let mut got = 0;
                while got < chunk.len() {
                    match protocol::parse(target.kind, &mut inb)
                        .map_err(|e| format!("preload: {e}"))?
                    {
                        Some(r) if r.ok => got += 1,
                        Some(_) => {
                            return Err(
                                "preload: the server refused a SET (is the store large enough?)"
                                    .to_string(),
                            );
                        }
                        None => {
                            if s.rd
                                .read_buf(&mut inb)
                                .await
                                .map_err(|e| format!("preload: {e}"))?
                                == 0
                            {
                                return Err("preload: server closed the connection".into());
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
}
