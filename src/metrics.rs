//! Counters and histograms, declared next to what they measure and read by
//! the STATS op.
//!
//! Every thread that executes requests (a worker, an inline dispatcher) owns
//! one cache-padded [`ExecStats`] slot and every dispatcher one
//! [`DispatcherStats`], so the hot path only ever writes to its own cache
//! lines. A STATS request sums the slots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::wire::pb::request::Op;

/// Operation labels, indexed by [`op_index`].
pub const OPS: [&str; 10] = [
    "get",
    "put",
    "delete",
    "multi_get",
    "multi_put",
    "ping",
    "stats",
    "spin",
    "auth",
    "invalid",
];

/// Status labels, indexed by the protobuf `Status` value.
pub const STATUSES: [&str; 9] = [
    "OK",
    "NOT_FOUND",
    "VERSION_MISMATCH",
    "INVALID_REQUEST",
    "TOO_LARGE",
    "OVERLOADED",
    "UNAUTHENTICATED",
    "INTERNAL",
    "OUT_OF_MEMORY",
];

/// The [`OPS`] index of a request's operation; `None` (no op set) is "invalid".
pub fn op_index(op: Option<&Op>) -> usize {
    match op {
        Some(Op::Get(_)) => 0,
        Some(Op::Put(_)) => 1,
        Some(Op::Delete(_)) => 2,
        Some(Op::MultiGet(_)) => 3,
        Some(Op::MultiPut(_)) => 4,
        Some(Op::Ping(_)) => 5,
        Some(Op::Stats(_)) => 6,
        Some(Op::Spin(_)) => 7,
        Some(Op::Auth(_)) => 8,
        None => 9,
    }
}

/// A histogram with power-of-two nanosecond buckets: one relaxed add per
/// sample, coarse but cheap enough for every request.
pub struct Log2Histogram {
    buckets: [AtomicU64; 64],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Log2Histogram {
    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let bucket = 64 - ns.leading_zeros() as usize; // 0 for 0 ns, else floor(log2)+1
        self.buckets[bucket.min(63)].fetch_add(1, Relaxed);
    }

    fn add_into(&self, sums: &mut [u64; 64]) {
        for (s, b) in sums.iter_mut().zip(&self.buckets) {
            *s += b.load(Relaxed);
        }
    }
}

/// Upper bound (ns) of the bucket holding quantile `q` of merged bucket counts.
fn quantile_upper_ns(sums: &[u64; 64], q: f64) -> u64 {
    let total: u64 = sums.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in sums.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return if i == 0 { 0 } else { (1u64 << i.min(63)) - 1 };
        }
    }
    u64::MAX
}

/// What one request-executing thread did.
#[derive(Default)]
pub struct ExecStats {
    requests: [[AtomicU64; STATUSES.len()]; OPS.len()],
    /// Time spent executing requests.
    pub busy_ns: AtomicU64,
    /// Tasks taken from another worker's deque.
    pub steals: AtomicU64,
    /// Times this worker went to sleep after its spin window.
    pub parks: AtomicU64,
    /// Times a parked worker was woken to take new work.
    pub wakeups: AtomicU64,
    /// Enqueue to start of execution.
    pub queue_delay: Log2Histogram,
    /// Start to end of execution.
    pub service_time: Log2Histogram,
}

impl ExecStats {
    /// Counts one finished request.
    pub fn count(&self, op: usize, status: i32) {
        let status = usize::try_from(status).unwrap_or(7).min(STATUSES.len() - 1);
        self.requests[op][status].fetch_add(1, Relaxed);
    }
}

/// What one dispatcher thread did.
#[derive(Default)]
pub struct DispatcherStats {
    /// Connections this dispatcher has served.
    pub connections_total: AtomicU64,
    /// Connections it serves now.
    pub connections_open: AtomicU64,
    /// Bytes read from clients (frames, partial frames and garbage alike).
    pub bytes_in: AtomicU64,
    /// Bytes of replies written to clients.
    pub bytes_out: AtomicU64,
    /// Time spent handling connection events (reading, framing, decoding,
    /// writing), as opposed to waiting for them: its load.
    pub busy_ns: AtomicU64,
}

/// All metrics of one server.
pub struct Metrics {
    exec: Box<[CachePadded<ExecStats>]>,
    dispatchers: Box<[CachePadded<DispatcherStats>]>,
    /// Connections refused at the connection limit.
    pub connections_rejected: AtomicU64,
    /// Requests refused with OVERLOADED because the queue was full.
    pub shed: AtomicU64,
}

impl Metrics {
    /// Slots for `exec_slots` executing threads and `dispatchers` dispatchers.
    pub fn new(exec_slots: usize, dispatchers: usize) -> Self {
        Metrics {
            exec: (0..exec_slots.max(1)).map(|_| Default::default()).collect(),
            dispatchers: (0..dispatchers.max(1))
                .map(|_| Default::default())
                .collect(),
            connections_rejected: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// The slot of executing thread `i` (wraps, so any index is valid).
    pub fn exec(&self, i: usize) -> &ExecStats {
        &self.exec[i % self.exec.len()]
    }

    /// The slot of dispatcher `i` (wraps, so any index is valid).
    pub fn dispatcher(&self, i: usize) -> &DispatcherStats {
        &self.dispatchers[i % self.dispatchers.len()]
    }

    /// Connections open across all dispatchers.
    pub fn connections_open(&self) -> u64 {
        self.dispatchers
            .iter()
            .map(|d| d.connections_open.load(Relaxed))
            .sum()
    }

    /// Every figure in the Prometheus text exposition format.
    pub fn prometheus_text(figures: &[(String, u64)]) -> String {
        let mut out = String::with_capacity(figures.len() * 64);
        let mut last_family = "";
        for (name, value) in figures {
            let family = name.split('{').next().unwrap_or(name);
            if family != last_family {
                let kind = if family.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                };
                out.push_str(&format!("# TYPE {family} {kind}\n"));
                last_family = family;
            }
            out.push_str(&format!("{name} {value}\n"));
        }
        out
    }

    /// Every figure as (name, value), in Prometheus naming.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (o, op) in OPS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n: u64 = self
                    .exec
                    .iter()
                    .map(|e| e.requests[o][s].load(Relaxed))
                    .sum();
                if n > 0 {
                    out.push((
                        format!("ramkv_requests_total{{op=\"{op}\",status=\"{status}\"}}"),
                        n,
                    ));
                }
            }
        }
        let sum = |f: fn(&DispatcherStats) -> &AtomicU64| -> u64 {
            self.dispatchers.iter().map(|d| f(d).load(Relaxed)).sum()
        };
        out.push((
            "ramkv_connections_open".into(),
            sum(|d| &d.connections_open),
        ));
        out.push((
            "ramkv_connections_total".into(),
            sum(|d| &d.connections_total),
        ));
        out.push((
            "ramkv_connections_rejected_total".into(),
            self.connections_rejected.load(Relaxed),
        ));
        out.push(("ramkv_bytes_in_total".into(), sum(|d| &d.bytes_in)));
        out.push(("ramkv_bytes_out_total".into(), sum(|d| &d.bytes_out)));
        out.push(("ramkv_shed_total".into(), self.shed.load(Relaxed)));
        for (i, d) in self.dispatchers.iter().enumerate() {
            out.push((
                format!("ramkv_dispatcher_busy_ns_total{{dispatcher=\"{i}\"}}"),
                d.busy_ns.load(Relaxed),
            ));
        }
        // A separate pass: Prometheus wants each family's samples together.
        for (i, d) in self.dispatchers.iter().enumerate() {
            out.push((
                format!("ramkv_dispatcher_connections_total{{dispatcher=\"{i}\"}}"),
                d.connections_total.load(Relaxed),
            ));
        }
        for (i, e) in self.exec.iter().enumerate() {
            for (name, v) in [
                ("busy_ns_total", &e.busy_ns),
                ("steals_total", &e.steals),
                ("parks_total", &e.parks),
                ("wakeups_total", &e.wakeups),
            ] {
                out.push((
                    format!("ramkv_worker_{name}{{worker=\"{i}\"}}"),
                    v.load(Relaxed),
                ));
            }
        }
        for (name, pick) in [
            (
                "queue_delay",
                (|e: &ExecStats| &e.queue_delay) as fn(&ExecStats) -> &Log2Histogram,
            ),
            ("service_time", |e: &ExecStats| &e.service_time),
        ] {
            let mut sums = [0u64; 64];
            self.exec.iter().for_each(|e| pick(e).add_into(&mut sums));
            for (q, label) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
                out.push((
                    format!("ramkv_{name}_ns{{quantile=\"{label}\",bound=\"upper\"}}"),
                    quantile_upper_ns(&sums, q),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_bound_the_samples() {
        let h = Log2Histogram::default();
        for _ in 0..99 {
            h.record(Duration::from_nanos(1_000));
        }
        h.record(Duration::from_millis(1));
        let mut sums = [0; 64];
        h.add_into(&mut sums);
        let p50 = quantile_upper_ns(&sums, 0.5);
        assert!((1_000..2_048).contains(&p50), "{p50}");
        assert!(quantile_upper_ns(&sums, 0.999) >= 1_000_000);
    }
}
