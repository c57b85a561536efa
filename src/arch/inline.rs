//! Connection-partitioned execution: the dispatcher that read a request runs
//! it, so a connection's requests never leave its thread.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Executor;
use crate::metrics::Metrics;
use crate::reply::ReplySink;
use crate::service::Service;
use crate::wire::Request;

/// Runs each request on the calling dispatcher thread.
pub struct InlineExecutor {
    /// What runs the requests.
    pub service: Arc<Service>,
    /// Where each dispatcher counts its requests (its slot = its index).
    pub metrics: Arc<Metrics>,
}

impl Executor for InlineExecutor {
    fn submit(&self, req: Request, sink: &Arc<ReplySink>, dispatcher: usize) {
        let stats = self.metrics.exec(dispatcher);
        let start = Instant::now();
        let resp = self.service.execute(req, stats);
        let took = start.elapsed();
        stats.service_time.record(took);
        stats.busy_ns.fetch_add(took.as_nanos() as u64, Relaxed);
        sink.push(&resp);
    }
}
