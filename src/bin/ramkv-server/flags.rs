//! Every flag of `ramkv-server`, with its default, and how it maps onto the
//! library's [`ServerBuilder`] and [`KvOptions`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ramkv::kv::KvOptions;
use ramkv::{Arch, Limits, ServerBuilder, Service, WorkerPolicy};

/// `--arch`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ArchFlag {
    /// Dispatchers own the sockets; a worker pool runs requests (message-based
    /// load balancing, as in RAMCloud).
    Lb,
    /// Each dispatcher runs the requests of its own connections. One
    /// dispatcher is the single-threaded server; N share one listening
    /// socket (several acceptors), or shard with --reuseport (NGINX style).
    Inline,
    /// One acceptor thread and one blocking thread per connection.
    ThreadPerConn,
}

/// `--worker-policy`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyFlag {
    /// `batch` when threads outnumber cores, else `normal`.
    Auto,
    /// SCHED_BATCH: woken workers wait for the running thread to block.
    Batch,
    /// The default policy: a woken worker may preempt at once.
    Normal,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("'{s}': {e} (use e.g. 4096, 64KiB or 1GiB)"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (use e.g. 500ms or 30s)"))
}

/// `ramkv-server`: a key-value RPC server that load-balances messages, not connections.
#[derive(Clone, Debug, Parser)]
#[command(name = "ramkv-server", version = ramkv::VERSION, about, long_about = None)]
pub struct Flags {
    /// Address to listen on (host:port; a host name is resolved). Loopback
    /// unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,

    /// Threading architecture.
    #[arg(long, value_enum, default_value = "lb")]
    pub arch: ArchFlag,

    /// Dispatcher threads, each owning a share of the connections.
    #[arg(long, default_value_t = 1)]
    pub dispatchers: usize,

    /// Give each dispatcher its own SO_REUSEPORT listener on the same port, so
    /// the kernel shards connections. Without it, one acceptor deals
    /// connections round-robin (lb) or all dispatchers accept on one shared
    /// socket (inline).
    #[arg(long)]
    pub reuseport: bool,

    /// Worker threads (lb only). Default: the cores left after the
    /// dispatchers, and at least 2, so that a slow request never holds up
    /// the fast ones behind it on its connection.
    #[arg(long)]
    pub workers: Option<usize>,

    /// Do not pin dispatchers and workers to cores.
    #[arg(long)]
    pub no_pin: bool,

    /// How long an idle worker spins before it parks, in microseconds (at
    /// most two spin at once). Default: 200 when every thread has a core of
    /// its own, else 0, because spinning then steals the core a dispatcher
    /// needs.
    #[arg(long)]
    pub spin_us: Option<u64>,

    /// Linux scheduling policy of lb's workers. `batch` (SCHED_BATCH) keeps
    /// a woken worker from preempting the dispatcher that woke it, so on a
    /// shared core the worker drains a whole round of requests at once:
    /// more throughput, about 10 µs more latency at low load (measured on one
    /// shared core). `auto` is `batch` when threads outnumber cores.
    #[arg(long, value_enum, default_value = "auto")]
    pub worker_policy: PolicyFlag,

    /// Send every request through lb's queue. By default a dispatcher runs
    /// quick requests (GET, DELETE, PINGs and PUTs up to 16 KiB) itself
    /// while no worker is ready, up to four per round of reading, which
    /// spares a wake-up and a hand-off each; turn that off to measure the
    /// hand-off, or when quick requests are not (GETs of large values).
    #[arg(long)]
    pub no_quick_path: bool,

    /// Largest frame accepted, and largest reply sent (suffixes: KiB, MiB,
    /// GiB). A larger length prefix closes the connection.
    #[arg(long, default_value = "4MiB", value_parser = size)]
    pub max_frame: u64,

    /// Largest key, in bytes.
    #[arg(long, default_value = "4KiB", value_parser = size)]
    pub max_key: u64,

    /// Largest value, in bytes.
    #[arg(long, default_value = "1MiB", value_parser = size)]
    pub max_value: u64,

    /// Memory the store may hold (keys, values, per-entry overhead). Puts
    /// past it fail with OUT_OF_MEMORY; nothing stored is evicted.
    #[arg(long, default_value = "1GiB", value_parser = size)]
    pub max_memory: u64,

    /// Requests one connection may have in flight. At the cap the server
    /// stops reading that socket, and TCP pushes back on the client.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Tasks the global queue may hold (lb only). Past it, requests get
    /// OVERLOADED at once. Default: 65536.
    #[arg(long)]
    pub queue_bound: Option<usize>,

    /// Reply bytes one connection may be owed, counting replies to requests
    /// already admitted at their largest possible size. At the bound the
    /// server stops reading its requests. At least --max-frame.
    #[arg(long, default_value = "8MiB", value_parser = size)]
    pub max_outbound: u64,

    /// A connection whose replies cannot be written for this long is dropped.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub write_timeout: Duration,

    /// Connections served at once; more get OVERLOADED and are closed.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection with nothing in flight and nothing read for this long is closed.
    #[arg(long, default_value = "300s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// A frame must be complete this long after its first byte (its length
    /// prefix included); else INVALID_REQUEST and the connection is closed
    /// (slowloris defence).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub frame_timeout: Duration,

    /// How long shutdown waits for in-flight requests and their replies.
    /// The process exits within it.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// After the server closes a connection, how long it still reads and
    /// discards what the client sends, so the close is not a reset that
    /// would discard the last replies.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub linger: Duration,

    /// Memory all connections together may hold for partly received
    /// requests, beyond a 64 KiB read buffer each. A connection that needs
    /// more waits for it (and its frame timeout runs).
    #[arg(long, default_value = "256MiB", value_parser = size)]
    pub max_request_memory: u64,

    /// Require every connection to authenticate first with the token in
    /// this file (see the AUTH op). The token never appears in logs.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,

    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics, and /health. Off by default.
    #[arg(long)]
    pub admin: Option<String>,

    /// Accept the benchmark-only SPIN op, which busy-waits (or sleeps) a worker.
    #[arg(long)]
    pub enable_spin_op: bool,

    /// Longest SPIN accepted, in microseconds.
    #[arg(long, default_value_t = 10_000)]
    pub spin_op_max_us: u64,

    /// Log filter (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Flags {
    /// What the key-value service takes from the flags.
    pub fn kv_options(&self) -> KvOptions {
        KvOptions {
            max_key: self.max_key as usize,
            max_value: self.max_value as usize,
            max_reply: self.max_frame as usize,
            max_memory: self.max_memory,
            max_spin: self
                .enable_spin_op
                .then(|| Duration::from_micros(self.spin_op_max_us)),
            auth_token_file: self.auth_token_file.clone(),
        }
    }

    /// The runtime's limits.
    /// Refuses flags the chosen architecture would ignore (the builder
    /// checks the rest).
    pub fn check(&self) -> Result<(), String> {
        if self.queue_bound.is_some() && !matches!(self.arch, ArchFlag::Lb) {
            return Err(
                "--queue-bound applies only to --arch lb: the other architectures have no queue"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame as usize,
            max_in_flight: self.max_in_flight,
            queue_bound: self.queue_bound.unwrap_or(Limits::default().queue_bound),
            max_outbound: self.max_outbound as usize,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            frame_timeout: self.frame_timeout,
            drain_timeout: self.drain_timeout,
            linger: self.linger,
            max_request_memory: self.max_request_memory as usize,
        }
    }

    /// The server builder the flags describe, for `service`.
    pub fn builder<S: Service>(&self, service: S) -> ServerBuilder<S> {
        let mut b = ServerBuilder::new(service)
            .listen(self.listen.clone())
            .arch(match self.arch {
                ArchFlag::Lb => Arch::Lb,
                ArchFlag::Inline => Arch::Inline,
                ArchFlag::ThreadPerConn => Arch::ThreadPerConn,
            })
            .dispatchers(self.dispatchers)
            .reuseport(self.reuseport)
            .pin(!self.no_pin)
            .worker_policy(match self.worker_policy {
                PolicyFlag::Auto => WorkerPolicy::Auto,
                PolicyFlag::Batch => WorkerPolicy::Batch,
                PolicyFlag::Normal => WorkerPolicy::Normal,
            })
            .quick_path(!self.no_quick_path)
            .limits(self.limits());
        if let Some(w) = self.workers {
            b = b.workers(w);
        }
        if let Some(us) = self.spin_us {
            b = b.spin(Duration::from_micros(us));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            b = b.tls(cert, key);
        }
        if let Some(a) = &self.admin {
            b = b.admin(a.clone());
        }
        b
    }
}
