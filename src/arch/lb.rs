//! Message-based load balancing: requests, not connections, are spread over
//! the workers, so one hot connection keeps every worker busy.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Executor;
use crate::metrics::Metrics;
use crate::queue::{PoolConfig, TaskQueue, WorkerCtx, WorkerPool};
use crate::reply::ReplySink;
use crate::service::Service;
use crate::wire::{Request, Status, error_response};

/// One request on its way from a dispatcher to a worker.
pub struct Task {
    request: Request,
    /// Where the reply goes: the owning connection's outbound buffer.
    sink: Arc<ReplySink>,
    /// When the dispatcher queued it, to split queueing delay from service time.
    enqueued: Instant,
}

/// Starts the worker pool that executes [`Task`]s against `service`.
pub fn start_pool(
    cfg: PoolConfig,
    service: Arc<Service>,
    metrics: Arc<Metrics>,
) -> std::io::Result<WorkerPool<Task>> {
    WorkerPool::start(cfg, metrics, move |task: Task, ctx: &WorkerCtx| {
        let start = Instant::now();
        ctx.stats.queue_delay.record(start - task.enqueued);
        let resp = service.execute(task.request, ctx.stats);
        let took = start.elapsed();
        ctx.stats.service_time.record(took);
        ctx.stats.busy_ns.fetch_add(took.as_nanos() as u64, Relaxed);
        task.sink.push(&resp);
    })
}

/// Queues requests for the pool, shedding load past the queue bound.
pub struct PoolExecutor {
    /// The pool's global queue.
    pub queue: Arc<TaskQueue<Task>>,
    /// Queue length past which requests are answered OVERLOADED (`--queue-bound`).
    pub bound: usize,
    /// Counts shed requests.
    pub metrics: Arc<Metrics>,
}

impl Executor for PoolExecutor {
    fn submit(&self, request: Request, sink: &Arc<ReplySink>, _dispatcher: usize) {
        if self.queue.len() >= self.bound {
            self.metrics.shed.fetch_add(1, Relaxed);
            sink.push(&error_response(
                request.id,
                Status::Overloaded,
                "server overloaded: request queue is full; retry later",
            ));
            return;
        }
        self.queue.push(Task {
            request,
            sink: sink.clone(),
            enqueued: Instant::now(),
        });
    }
}
