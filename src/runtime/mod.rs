//! The RPC runtime: listeners, dispatchers, the worker pool, the reply path,
//! limits, runtime metrics, the admin endpoint and TLS, for any [`Service`].
//!
//! Build a server with [`ServerBuilder`], which the `ramkv-server` binary
//! maps its flags onto:
//!
//! ```no_run
//! use ramkv::kv::{KvOptions, KvService};
//! use ramkv::{Arch, ServerBuilder};
//!
//! let kv = KvService::new(KvOptions::default())?;
//! let server = ServerBuilder::new(kv).listen("127.0.0.1:0").arch(Arch::Lb).start()?;
//! println!("serving on {}", server.local_addr());
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod blocking;
pub mod conn;
mod dispatcher;
mod exec;
pub mod frame;
mod listen;
pub mod metrics;
mod pool;
mod reply;
mod roster;
pub mod service;
mod thread;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use admin::Admin;
use exec::{Exec, Task};
use metrics::Metrics;
use pool::{PoolConfig, WorkerPool};
use service::{ExecContext, Service};
use thread::Threads;

pub use metrics::process_cpu_us;
pub use roster::ConnInfo;

/// How requests are executed. Only the threading differs between modes: the
/// framing, the limits and the service are the same.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Dispatchers own the sockets; a worker pool runs requests (message-based
    /// load balancing, as in RAMCloud).
    Lb,
    /// Each dispatcher runs the requests of its own connections. One
    /// dispatcher is the single-threaded server; several share one listening
    /// socket (several acceptors), or shard with reuseport (NGINX style).
    Inline,
    /// One acceptor thread and one blocking thread per connection.
    ThreadPerConn,
}

/// How the kernel schedules lb's workers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WorkerPolicy {
    /// `Batch` when threads outnumber cores, else `Normal`.
    Auto,
    /// SCHED_BATCH: a woken worker waits for the running thread to block.
    Batch,
    /// The default policy: a woken worker may preempt at once.
    Normal,
}

/// Limits on what a connection, and the server, may hold and take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame accepted; a larger length prefix closes the connection.
    pub max_frame: usize,
    /// Requests one connection may have in flight; at the cap it is not read.
    pub max_in_flight: usize,
    /// Requests lb's queue may hold; past it they are answered OVERLOADED.
    pub queue_bound: usize,
    /// Reply bytes one connection may have owed (written or reserved for
    /// requests admitted); at the bound it is not read.
    pub max_outbound: usize,
    /// A connection whose replies cannot be written for this long is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; more get an answer and are closed.
    pub max_connections: usize,
    /// A connection with nothing read and nothing owed this long is closed.
    pub idle_timeout: Duration,
    /// A frame that has started must be complete this long after its first byte.
    pub frame_timeout: Duration,
    /// How long shutdown waits for requests in flight and their replies.
    pub drain_timeout: Duration,
    /// After a server-side close, how long to read and discard what the
    /// client still sends, so its unread input does not make the kernel
    /// reset the connection and discard the last replies.
    pub linger: Duration,
    /// Bytes of partly received requests all connections together may hold
    /// beyond one 64 KiB read buffer each.
    pub max_request_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 4 << 20,
            max_in_flight: 1024,
            queue_bound: 65_536,
            max_outbound: 8 << 20,
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(2),
            max_request_memory: 256 << 20,
        }
    }
}

impl Limits {
    /// Refuses limits that cannot work, with a message that says why.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("--max-in-flight", self.max_in_flight == 0),
            ("--queue-bound", self.queue_bound == 0),
            ("--max-outbound", self.max_outbound == 0),
            ("--max-connections", self.max_connections == 0),
            ("--write-timeout", self.write_timeout.is_zero()),
            ("--idle-timeout", self.idle_timeout.is_zero()),
            ("--frame-timeout", self.frame_timeout.is_zero()),
        ];
        if let Some((flag, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("{flag} must be more than 0"));
        }
        if self.max_frame < 16 || self.max_frame > u32::MAX as usize {
            return Err("--max-frame must be between 16 bytes and 4GiB".into());
        }
        if self.max_outbound < self.max_frame {
            return Err(format!(
                "--max-outbound ({}) must be at least --max-frame ({}), so that one reply of the largest size fits",
                self.max_outbound, self.max_frame
            ));
        }
        if self.max_request_memory < self.max_frame {
            return Err(format!(
                "--max-request-memory ({}) must be at least --max-frame ({}), or a frame of the largest size could never be received",
                self.max_request_memory, self.max_frame
            ));
        }
        Ok(())
    }
}

/// Connections turned away at `max_connections` that are still being closed
/// gracefully: their refusal written, then their input read and discarded
/// for `linger`, so the close is a FIN and not a reset that would destroy the
/// refusal before the client reads it. At most [`Refusals::MAX`] at once, so
/// a flood of connections past the limit cannot hold descriptors (or, in
/// thread-per-conn, threads) for long; past that they are closed at once.
#[derive(Clone, Default)]
pub struct Refusals(Arc<std::sync::atomic::AtomicUsize>);

/// One refusal being closed gracefully; frees its place when dropped.
pub struct Lingering(Arc<std::sync::atomic::AtomicUsize>);

impl Refusals {
    /// Refused connections that may linger at once.
    pub const MAX: usize = 256;

    /// A place for one more lingering refusal, if there is one.
    pub fn try_linger(&self) -> Option<Lingering> {
        use std::sync::atomic::Ordering::Relaxed;
        let taken = self.0.fetch_add(1, Relaxed);
        if taken >= Self::MAX {
            self.0.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Lingering(self.0.clone()))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a server could not start. Nothing it started is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is contradictory; the message says how.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket or thread could not be created.
    #[error("{context}: {source}")]
    Io {
        /// What was being attempted, e.g. "cannot listen on 127.0.0.1:7878".
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Io {
        context: context.into(),
        source,
    }
}

/// Builds a [`Server`] for a service. Every setting has the default the
/// `ramkv-server` binary documents.
pub struct ServerBuilder<S: Service> {
    service: S,
    listen: String,
    arch: Arch,
    dispatchers: usize,
    reuseport: bool,
    workers: Option<usize>,
    pin: bool,
    spin: Option<Duration>,
    worker_policy: WorkerPolicy,
    quick_path: bool,
    limits: Limits,
    tls: Option<(PathBuf, PathBuf)>,
    admin: Option<String>,
}

impl<S: Service> ServerBuilder<S> {
    /// A builder for `service` with the defaults: lb, one dispatcher, pinned
    /// threads, listening on 127.0.0.1:7878.
    pub fn new(service: S) -> Self {
        ServerBuilder {
            service,
            listen: "127.0.0.1:7878".into(),
            arch: Arch::Lb,
            dispatchers: 1,
            reuseport: false,
            workers: None,
            pin: true,
            spin: None,
            worker_policy: WorkerPolicy::Auto,
            quick_path: true,
            limits: Limits::default(),
            tls: None,
            admin: None,
        }
    }

    /// The address to listen on: `host:port`, a host name allowed (its first
    /// address is used). Port 0 picks a free port.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// The threading architecture.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Dispatcher threads (lb and inline).
    pub fn dispatchers(mut self, n: usize) -> Self {
        self.dispatchers = n;
        self
    }

    /// One SO_REUSEPORT listener per dispatcher: the kernel shards
    /// connections. Without it lb deals connections round-robin from one
    /// acceptor, and inline's dispatchers share one socket.
    pub fn reuseport(mut self, on: bool) -> Self {
        self.reuseport = on;
        self
    }

    /// lb's worker threads (default: the cores left after the dispatchers,
    /// at least two).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Pin dispatchers and workers to cores (default on).
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }

    /// How long an idle worker spins before it parks (default: 200 µs when
    /// every thread has a core of its own, else 0).
    pub fn spin(mut self, window: Duration) -> Self {
        self.spin = Some(window);
        self
    }

    /// lb's worker scheduling policy.
    pub fn worker_policy(mut self, policy: WorkerPolicy) -> Self {
        self.worker_policy = policy;
        self
    }

    /// lb's quick path (default on): a dispatcher runs a request the
    /// service calls quick ([`Service::is_quick`]) itself while no worker is
    /// ready for it, instead of paying a worker's wake-up and the reply's.
    /// Off, every request goes through the queue, as when measuring what the
    /// hand-off costs.
    pub fn quick_path(mut self, on: bool) -> Self {
        self.quick_path = on;
        self
    }

    /// The limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serve TLS with this PEM certificate chain and key (lb and inline).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Serve `/metrics` and `/health` over HTTP on this address.
    pub fn admin(mut self, addr: impl Into<String>) -> Self {
        self.admin = Some(addr.into());
        self
    }

    /// Cores this process may use: the fewer of its affinity mask's CPUs
    /// and its CPU quota (a container given 2 CPUs of 16 has 2).
    fn usable_cores() -> usize {
        let pinnable = core_affinity::get_core_ids().map_or(1, |c| c.len());
        let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
        pinnable.min(quota).max(1)
    }

    /// lb's workers: as asked, or the cores left after the dispatchers, at
    /// least two: with one, a slow request would block every request queued
    /// behind it, which lb exists to prevent.
    fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(self.dispatchers).max(2)
        })
    }

    fn threads_share_cores(&self) -> bool {
        Self::usable_cores() < self.dispatchers + self.worker_count()
    }

    fn check(&self) -> Result<(), StartError> {
        let bad = |m: &str| Err(StartError::Config(m.into()));
        self.limits.validate().map_err(StartError::Config)?;
        if self.dispatchers == 0 {
            return bad("--dispatchers must be at least 1");
        }
        if self.workers == Some(0) {
            return bad("--workers must be at least 1");
        }
        if self.arch != Arch::Lb
            && (self.spin.is_some() || self.worker_policy != WorkerPolicy::Auto || !self.quick_path)
        {
            return bad(
                "--spin-us, --worker-policy and --no-quick-path apply only to --arch lb's workers: the other architectures have none",
            );
        }
        if self.arch != Arch::Lb && self.workers.is_some() {
            return bad(
                "--workers applies only to --arch lb: the other architectures execute requests on the threads that read them",
            );
        }
        if self.arch == Arch::ThreadPerConn && (self.dispatchers != 1 || self.reuseport) {
            return bad(
                "--arch thread-per-conn has one acceptor thread and no dispatchers: drop --dispatchers and --reuseport",
            );
        }
        if self.arch == Arch::ThreadPerConn && self.tls.is_some() {
            return bad(
                "TLS is served by the dispatcher architectures (lb, inline); thread-per-conn is a plain-TCP baseline",
            );
        }
        Ok(())
    }

    /// Starts the server and returns once it accepts connections. A failed
    /// start, at any step, leaves no thread running and the port free.
    pub fn start(self) -> Result<Server<S>, StartError> {
        self.check()?;
        let addr = listen::resolve(&self.listen)?;
        let tls = match &self.tls {
            Some((cert, key)) => {
                Some(tls::acceptor(cert, key).map_err(io_err("cannot load the TLS certificate"))?)
            }
            None => None,
        };
        let first = listen::bind(addr, self.reuseport)
            .map_err(io_err(format!("cannot listen on {}", self.listen)))?;
        let addr = first
            .local_addr()
            .map_err(io_err("cannot read the listening address"))?;
        let admin_addr = self.admin.as_deref().map(listen::resolve).transpose()?;
        let server = match self.arch {
            Arch::ThreadPerConn => self.start_blocking(first, addr)?,
            _ => self.start_dispatchers(first, addr, tls)?,
        };
        server.with_admin(admin_addr)
    }

    fn start_blocking(
        self,
        listener: std::net::TcpListener,
        addr: SocketAddr,
    ) -> Result<Server<S>, StartError> {
        let service = Arc::new(self.service);
        let metrics = Arc::new(Metrics::new(blocking::EXEC_SLOTS, 1));
        let figures = Arc::new(Figures::new(metrics.clone(), None));
        let acceptor = blocking::Acceptor::start(
            listener,
            service.clone(),
            self.limits.clone(),
            metrics,
            figures.clone(),
        )
        .map_err(io_err("cannot start the acceptor thread"))?;
        Ok(Server {
            addr,
            admin_addr: None,
            service,
            figures,
            shutdown: CancellationToken::new(),
            dispatchers: Threads::default(),
            tls: None,
            pool: None,
            blocking: Some(acceptor),
            admin: None,
            drain_timeout: self.limits.drain_timeout,
        })
    }

    fn start_dispatchers(
        self,
        first: std::net::TcpListener,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Server<S>, StartError> {
        let dispatchers = self.dispatchers;
        let workers = if self.arch == Arch::Lb {
            self.worker_count()
        } else {
            0
        };
        let share_cores = self.threads_share_cores();
        let (listeners, inboxes) =
            listen::listeners(first, addr, dispatchers, self.reuseport, self.arch)?;
        let (dispatcher_cores, worker_cores) = self.plan_cores(dispatchers, workers);
        // lb's dispatchers run quick requests themselves (Service::is_quick):
        // their slots follow the workers'.
        let (exec_slots, exec_base) = if self.arch == Arch::Lb {
            (workers + dispatchers, workers)
        } else {
            (dispatchers, 0)
        };
        let metrics = Arc::new(Metrics::new(exec_slots, dispatchers));
        let tls = match tls {
            Some(acceptor) => Some(Arc::new(
                tls::Handshakes::start(acceptor, dispatchers)
                    .map_err(io_err("cannot start the TLS handshake threads"))?,
            )),
            None => None,
        };
        let service = Arc::new(self.service);
        let figures = Arc::new(Figures::new(
            metrics.clone(),
            Some(self.limits.max_request_memory),
        ));
        let (exec, pool) = match self.arch {
            Arch::Lb => {
                let spin = self.spin.unwrap_or(if share_cores {
                    Duration::ZERO
                } else {
                    Duration::from_micros(200)
                });
                let batch_sched = match self.worker_policy {
                    WorkerPolicy::Auto => share_cores,
                    WorkerPolicy::Batch => true,
                    WorkerPolicy::Normal => false,
                };
                tracing::info!(
                    workers,
                    spin_us = spin.as_micros() as u64,
                    batch_sched,
                    "starting worker pool"
                );
                let cfg = PoolConfig {
                    workers,
                    spin,
                    cores: worker_cores,
                    batch_sched,
                };
                let pool = start_pool(cfg, service.clone(), metrics.clone(), figures.clone())
                    .map_err(io_err("cannot start worker threads"))?;
                figures.set_queue(pool.queue().clone());
                let exec = Exec::Pool {
                    queue: pool.queue().clone(),
                    bound: self.limits.queue_bound,
                    quick: self.quick_path,
                };
                (exec, Some(pool))
            }
            _ => (Exec::Inline, None),
        };
        let shared = Arc::new(dispatcher::Shared {
            service: service.clone(),
            limits: self.limits.clone(),
            metrics,
            figures: figures.clone(),
            exec,
            tls: tls.clone(),
            shutdown: CancellationToken::new(),
            open_connections: std::sync::atomic::AtomicUsize::new(0),
            refusals: Refusals::default(),
            exec_base,
            budget: Arc::new(frame::RequestBudget::new(self.limits.max_request_memory)),
            rosters: (0..dispatchers)
                .map(|i| Arc::new(roster::Roster::new(Some(i))))
                .collect(),
        });
        figures.set_budget(shared.clone());
        figures.set_connections(shared.rosters.clone());
        let mut server = Server {
            addr,
            admin_addr: None,
            service,
            figures,
            shutdown: shared.shutdown.clone(),
            dispatchers: Threads::default(),
            tls,
            pool,
            blocking: None,
            admin: None,
            drain_timeout: self.limits.drain_timeout,
        };
        for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let core = dispatcher_cores[i];
            match dispatcher::spawn(
                i,
                shared.clone(),
                listener,
                inbox,
                core,
                &mut server.dispatchers,
            ) {
                Ok(()) => {}
                Err(e) => {
                    server.shutdown();
                    return Err(StartError::Io {
                        context: "cannot start a dispatcher thread".into(),
                        source: e,
                    });
                }
            }
        }
        Ok(server)
    }

    /// Assigns cores: dispatchers first, then workers, wrapping around when
    /// there are more threads than cores. Logs each assignment.
    fn plan_cores(
        &self,
        dispatchers: usize,
        workers: usize,
    ) -> (
        Vec<Option<core_affinity::CoreId>>,
        Vec<Option<core_affinity::CoreId>>,
    ) {
        let cores = match self.pin {
            true => core_affinity::get_core_ids().unwrap_or_default(),
            false => Vec::new(),
        };
        if cores.is_empty() {
            tracing::info!("threads are not pinned");
            return (vec![None; dispatchers], vec![None; workers]);
        }
        if dispatchers + workers > cores.len() {
            tracing::warn!(
                threads = dispatchers + workers,
                cores = cores.len(),
                "more threads than cores: some share a core"
            );
        }
        let pick = |i: usize| Some(cores[i % cores.len()]);
        let d: Vec<_> = (0..dispatchers).map(pick).collect();
        let w: Vec<_> = (0..workers).map(|j| pick(dispatchers + j)).collect();
        for (i, c) in d.iter().enumerate() {
            tracing::info!("dispatcher {i} pinned to core {}", c.map_or(0, |c| c.id));
        }
        for (i, c) in w.iter().enumerate() {
            tracing::info!("worker {i} pinned to core {}", c.map_or(0, |c| c.id));
        }
        (d, w)
    }
}

/// Starts lb's workers, each running queued tasks against the service.
fn start_pool<S: Service>(
    cfg: PoolConfig,
    service: Arc<S>,
    metrics: Arc<Metrics>,
    figures: Arc<Figures>,
) -> io::Result<WorkerPool<Task<S>>> {
    WorkerPool::start(cfg, metrics, move |task: Task<S>, ctx: &pool::WorkerCtx| {
        let runtime = |out: &mut Vec<(String, u64)>| figures.collect(out);
        let exec = ExecContext {
            slot: ctx.index,
            runtime: &runtime,
        };
        exec::run_task(&*service, task, &exec, ctx.stats);
    })
}

/// The runtime's own figures, for STATS and the admin endpoint. Parts that
/// exist only once the server is assembled are filled in then.
pub struct Figures {
    metrics: Arc<Metrics>,
    queue: OnceLock<Arc<dyn Fn() -> usize + Send + Sync>>,
    budget: OnceLock<Arc<dyn Fn() -> usize + Send + Sync>>,
    budget_limit: Option<usize>,
    connections: OnceLock<ListConnections>,
}

/// Appends every open connection.
type ListConnections = Box<dyn Fn(&mut Vec<roster::ConnInfo>) + Send + Sync>;

impl Figures {
    fn new(metrics: Arc<Metrics>, budget_limit: Option<usize>) -> Self {
        Figures {
            metrics,
            queue: OnceLock::new(),
            budget: OnceLock::new(),
            budget_limit,
            connections: OnceLock::new(),
        }
    }

    fn set_queue<T: Send + 'static>(&self, queue: Arc<pool::TaskQueue<T>>) {
        let weak = Arc::downgrade(&queue);
        let _ = self
            .queue
            .set(Arc::new(move || weak.upgrade().map_or(0, |q| q.len())));
    }

    fn set_budget<S: Service>(&self, shared: Arc<dispatcher::Shared<S>>) {
        let weak = Arc::downgrade(&shared);
        let _ = self.budget.set(Arc::new(move || {
            weak.upgrade().map_or(0, |s| s.budget.used())
        }));
    }

    fn set_connections<H: Send + 'static>(&self, rosters: Vec<Arc<roster::Roster<H>>>) {
        let weak: Vec<_> = rosters.iter().map(Arc::downgrade).collect();
        let _ = self.connections.set(Box::new(move |out| {
            let now = Instant::now();
            for r in weak.iter().filter_map(|w| w.upgrade()) {
                r.list(now, out);
            }
        }));
    }

    /// Every open connection: its peer, its dispatcher and its age.
    pub fn connections(&self) -> Vec<roster::ConnInfo> {
        let mut out = Vec::new();
        if let Some(list) = self.connections.get() {
            list(&mut out);
        }
        out
    }

    /// Appends every runtime figure as `(name, value)`.
    pub fn collect(&self, out: &mut Vec<(String, u64)>) {
        self.metrics.snapshot(out);
        if let Some(depth) = self.queue.get() {
            out.push(("ramkv_queue_depth".into(), depth() as u64));
        }
        if let (Some(used), Some(limit)) = (self.budget.get(), self.budget_limit) {
            out.push(("ramkv_request_memory_bytes".into(), used() as u64));
            out.push(("ramkv_request_memory_limit_bytes".into(), limit as u64));
        }
        out.push((
            format!(
                "ramkv_build_info{{version=\"{}\",commit=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                env!("RAMKV_COMMIT")
            ),
            1,
        ));
    }

    /// The latency histograms, for the admin endpoint.
    fn histograms(&self) -> Vec<metrics::Histogram> {
        self.metrics.histograms()
    }
}

/// A running server. [`Server::shutdown`] drains it; dropping it without
/// that leaves its threads running until the process exits.
pub struct Server<S: Service> {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    service: Arc<S>,
    figures: Arc<Figures>,
    shutdown: CancellationToken,
    dispatchers: Threads,
    tls: Option<Arc<tls::Handshakes>>,
    pool: Option<WorkerPool<Task<S>>>,
    blocking: Option<blocking::Acceptor<S>>,
    admin: Option<Admin>,
    drain_timeout: Duration,
}

impl<S: Service> Server<S> {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin endpoint listens, if one was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The service, to inspect it in-process.
    pub fn service(&self) -> &Arc<S> {
        &self.service
    }

    /// Every figure STATS reports: the runtime's and the service's.
    pub fn figures(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.figures.collect(&mut out);
        self.service.figures(&mut out);
        out
    }

    /// Every open connection: its peer, the dispatcher serving it, its age
    /// (what the admin endpoint's `/connections` lists).
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.figures.connections()
    }

    /// Starts the admin endpoint last; if it cannot start, stops everything
    /// else, so a failed start leaves nothing running.
    fn with_admin(mut self, addr: Option<SocketAddr>) -> Result<Self, StartError> {
        let Some(addr) = addr else { return Ok(self) };
        let (service, figures) = (self.service.clone(), self.figures.clone());
        let collect = move |out: &mut Vec<(String, u64)>| {
            figures.collect(out);
            service.figures(out);
        };
        match Admin::start(addr, Arc::new(collect), self.figures.clone()) {
            Ok(a) => {
                self.admin_addr = Some(a.local_addr());
                self.admin = Some(a);
                Ok(self)
            }
            Err(source) => {
                self.shutdown();
                Err(StartError::Io {
                    context: format!("cannot serve the admin endpoint on {addr}"),
                    source,
                })
            }
        }
    }

    /// Graceful shutdown: stop accepting, finish the requests in flight,
    /// write their replies, close the connections, stop the threads. The
    /// whole of it is bounded by the drain timeout: a request still running
    /// then is abandoned to its thread, which exits when it returns.
    pub fn shutdown(self) {
        let deadline = Instant::now() + self.drain_timeout;
        if let Some(a) = &self.admin {
            a.draining();
        }
        self.shutdown.cancel();
        if !self.dispatchers.join_by(deadline) {
            tracing::warn!(
                "drain timeout: leaving dispatchers behind that are still running requests"
            );
        }
        if let Some(tls) = &self.tls {
            tls.stop(deadline);
        }
        if let Some(pool) = self.pool {
            pool.shutdown(deadline);
        }
        if let Some(b) = self.blocking {
            b.shutdown(deadline);
        }
        if let Some(a) = self.admin {
            a.stop();
        }
    }
}
