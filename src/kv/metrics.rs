//! Requests counted by operation and status, the key-value service's own
//! figures. Each executing thread counts in its own cache-padded stripe, so
//! the hot path never shares a counter line; STATS sums the stripes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use ramkv_proto::{Status, request::Op};

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

/// Stripes of counters; a thread's slot picks one (wrapping).
const STRIPES: usize = 64;

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

type Table = [[AtomicU64; STATUSES.len()]; OPS.len()];

/// Requests by op and status.
pub(super) struct KvMetrics {
    stripes: Box<[CachePadded<Table>]>,
}

impl Default for KvMetrics {
    fn default() -> Self {
        KvMetrics {
            stripes: (0..STRIPES)
                .map(|_| CachePadded::new(Default::default()))
                .collect(),
        }
    }
}

impl KvMetrics {
    /// Counts one request of op `op` answered with `status`, in `slot`'s stripe.
    pub(super) fn count_index(&self, slot: usize, op: usize, status: i32) {
        let status = usize::try_from(status).unwrap_or(7).min(STATUSES.len() - 1);
        self.stripes[slot % STRIPES][op.min(OPS.len() - 1)][status].fetch_add(1, Relaxed);
    }

    /// Counts a request answered at admission (on a dispatcher: stripe 0).
    pub(super) fn count(&self, op: &Option<Op>, status: Status) {
        self.count_index(0, op_index(op.as_ref()), status as i32);
    }

    /// Counts a frame that did not decode.
    pub(super) fn count_invalid(&self, status: Status) {
        self.count_index(0, op_index(None), status as i32);
    }

    /// `ramkv_requests_total{op,status}` for every pair seen.
    pub(super) fn figures(&self, out: &mut Vec<(String, u64)>) {
        for (o, op) in OPS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n: u64 = self.stripes.iter().map(|t| t[o][s].load(Relaxed)).sum();
                if n > 0 {
                    out.push((
                        format!("ramkv_requests_total{{op=\"{op}\",status=\"{status}\"}}"),
                        n,
                    ));
                }
            }
        }
    }
}
