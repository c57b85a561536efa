//! Server configuration: every flag of `ramkv-server`, its default, and the
//! checks that refuse combinations that make no sense.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `--worker-policy`: how the kernel schedules lb's workers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkerPolicy {
    /// `batch` when threads outnumber cores, else `normal`.
    Auto,
    /// SCHED_BATCH: woken workers wait for the running thread to block.
    Batch,
    /// The default policy: a woken worker may preempt at once.
    Normal,
}

/// How requests are executed. Only the threading differs between modes: the
/// protocol, the store and the framing are shared.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// Dispatchers own the sockets; a work-stealing worker pool runs requests
    /// (message-based load balancing, as in RAMCloud).
    Lb,
    /// Each dispatcher runs the requests of its own connections. One
    /// dispatcher is the single-threaded server; N share one listening socket
    /// (several acceptors), or shard with --reuseport (NGINX style).
    Inline,
    /// One acceptor thread and one blocking thread per connection.
    ThreadPerConn,
}

/// `ramkv-server`: a key-value RPC server that load-balances messages, not connections.
#[derive(Clone, Debug, Parser)]
#[command(name = "ramkv-server", version = crate::VERSION, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,

    /// Threading architecture.
    #[arg(long, value_enum, default_value = "lb")]
    pub arch: Arch,

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

    /// How long an idle worker spins before it parks, in microseconds.
    /// Default: 200 when every thread has a core of its own, else 0, because
    /// spinning then steals the core a dispatcher needs.
    #[arg(long)]
    pub spin_us: Option<u64>,

    /// Linux scheduling policy of lb's workers. `batch` (SCHED_BATCH) keeps
    /// a woken worker from preempting the dispatcher that woke it, so on a
    /// shared core the worker drains a whole round of requests at once:
    /// more throughput, about 10 µs more latency at low load (measured on one
    /// shared core). `auto` is `batch` when threads outnumber cores, else
    /// `normal`.
    #[arg(long, value_enum, default_value = "auto")]
    pub worker_policy: WorkerPolicy,

    /// Largest frame accepted, in bytes (suffixes: KiB, MiB, GiB). A larger
    /// length prefix closes the connection.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub max_frame: u64,

    /// Largest key, in bytes.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    pub max_key: u64,

    /// Largest value, in bytes.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_value: u64,

    /// Memory the store may hold (keys, values, per-entry overhead). Puts
    /// past it fail with OUT_OF_MEMORY; nothing stored is evicted.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_memory: u64,

    /// Requests one connection may have in flight. At the cap the server
    /// stops reading that socket, and TCP pushes back on the client.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Tasks the global queue may hold (lb). Past it, requests get OVERLOADED at once.
    #[arg(long, default_value_t = 65_536)]
    pub queue_bound: usize,

    /// Reply bytes one connection may have waiting before the server stops
    /// reading its requests.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub max_outbound: u64,

    /// A connection whose replies cannot be written for this long is dropped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Connections served at once; more are closed at accept.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection with nothing in flight and nothing read for this long is closed.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A frame that has started arriving must be complete within this long
    /// (slowloris defence); else INVALID_REQUEST and the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub frame_timeout: Duration,

    /// Require every connection to authenticate first with the token in
    /// this file (see the AUTH op). The token never appears in logs.
    #[arg(long)]
    pub auth_token_file: Option<std::path::PathBuf>,

    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics. Off by default.
    #[arg(long)]
    pub admin: Option<SocketAddr>,

    /// How long shutdown waits for in-flight requests and their replies.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Accept the benchmark-only SPIN op, which busy-waits a worker.
    #[arg(long)]
    pub enable_spin_op: bool,

    /// Longest SPIN accepted, in microseconds.
    #[arg(long, default_value_t = 10_000)]
    pub spin_op_max_us: u64,

    /// Log filter (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        // Parsing no arguments yields exactly the documented defaults.
        Config::parse_from(["ramkv-server"])
    }
}

impl Config {
    /// Defaults suited to tests: an ephemeral loopback port and no pinning.
    pub fn for_tests() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            no_pin: true,
            ..Config::default()
        }
    }

    /// Refuses combinations that make no sense, with a message that says why.
    pub fn validate(&self) -> Result<(), String> {
        if self.dispatchers == 0 {
            return Err("--dispatchers must be at least 1".into());
        }
        if self.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        if self.arch != Arch::Lb && self.workers.is_some() {
            return Err("--workers applies only to --arch lb: the other architectures execute requests on the threads that read them".into());
        }
        if self.arch == Arch::ThreadPerConn && (self.dispatchers != 1 || self.reuseport) {
            return Err("--arch thread-per-conn has one acceptor thread and no dispatchers: drop --dispatchers and --reuseport".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.arch == Arch::ThreadPerConn && self.tls_cert.is_some() {
            return Err("TLS is served by the dispatcher architectures (lb, inline); thread-per-conn is a plain-TCP baseline".into());
        }
        if self.max_frame < 16 || self.max_frame > u32::MAX as u64 {
            return Err("--max-frame must be between 16 bytes and 4GiB".into());
        }
        if self.max_in_flight == 0 || self.queue_bound == 0 {
            return Err("--max-in-flight and --queue-bound must be at least 1".into());
        }
        Ok(())
    }

    /// Worker threads for lb: the flag, or the cores left after the
    /// dispatchers but never fewer than two. With one worker a slow request
    /// would block every request queued behind it, which is exactly what lb
    /// exists to prevent; on a machine with fewer cores the workers share
    /// them (and run as SCHED_BATCH, see `--worker-policy`).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(self.dispatchers).max(2)
        })
    }

    /// True when lb's dispatchers and workers outnumber the cores this
    /// process may run on, so some of them take turns on a core. The cores
    /// are the fewer of the CPUs in its affinity mask and its CPU quota (a
    /// container limited to 2 CPUs of 16 must not spin as if it had 16).
    pub fn threads_share_cores(&self) -> bool {
        let pinnable = core_affinity::get_core_ids().map_or(1, |c| c.len());
        let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
        pinnable.min(quota) < self.dispatchers + self.worker_count()
    }

    /// Whether lb's workers run as SCHED_BATCH, from the flag or the core count.
    pub fn batch_workers(&self) -> bool {
        match self.worker_policy {
            WorkerPolicy::Auto => self.threads_share_cores(),
            WorkerPolicy::Batch => true,
            WorkerPolicy::Normal => false,
        }
    }

    /// The idle spin window, from the flag or the core count.
    pub fn spin_window(&self) -> Duration {
        let us = self
            .spin_us
            .unwrap_or(if self.threads_share_cores() { 0 } else { 200 });
        Duration::from_micros(us)
    }
}

/// Parses a byte size: a number, optionally followed by B, K/KiB, M/MiB or G/GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 4096, 64KiB or 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}': unknown size unit '{unit}' (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a duration: a number followed by ns, us, ms, s or m.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 500ms or 30s"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("'{s}': give a unit (ns, us, ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn nonsense_combinations_are_refused() {
        let mut c = Config::for_tests();
        assert!(c.validate().is_ok());
        c.arch = Arch::ThreadPerConn;
        c.reuseport = true;
        assert!(c.validate().unwrap_err().contains("thread-per-conn"));
        c.arch = Arch::Inline;
        c.workers = Some(2);
        assert!(c.validate().unwrap_err().contains("--workers"));
    }
}
