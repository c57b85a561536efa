//! SPIN: the benchmark op. The executing thread busy-waits for the time
//! asked, as a CPU-bound request would, or with `sleep` sleeps for it, as a
//! handler blocked on I/O would: in lb a worker, in inline the dispatcher
//! itself, in thread-per-conn the connection's thread. Refused unless the
//! server enables it, and bounded.

use std::time::{Duration, Instant};

use ramkv_proto::{self as pb, Status, response::Result as Res};

use super::{Outcome, Reject, ok};
use crate::kv::KvService;

pub(super) fn run(svc: &KvService, s: pb::Spin) -> Outcome {
    let Some(max) = svc.opts.max_spin else {
        return Err(Reject(
            Status::InvalidRequest,
            "SPIN is a benchmark op; start the server with --enable-spin-op".into(),
        ));
    };
    let d = Duration::from_nanos(s.nanos);
    if d > max {
        return Err(Reject(
            Status::InvalidRequest,
            format!("SPIN of {d:?} exceeds the limit of {max:?} (--spin-op-max-us)"),
        ));
    }
    if s.sleep {
        std::thread::sleep(d);
    } else {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }
    ok(Res::Spin(pb::SpinResult {}))
}
