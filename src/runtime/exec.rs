//! Where admitted requests run: the two execution strategies behind ramkv's
//! five architectures, and the one function that runs a request.
//!
//! - [`Exec::Pool`] (lb): the request, with its responder and the time it
//!   was queued, goes onto the shared queue; a worker runs it. Past the
//!   queue bound it is answered OVERLOADED at once (load shedding). The
//!   exception is a quick request ([`Service::is_quick`]) while no worker is
//!   ready for it: the dispatcher runs it, sparing a wake-up and a hand-off
//!   (unless `--no-quick-path`).
//! - [`Exec::Inline`] (inline, thread-per-conn): the thread that read the
//!   request runs it there and then.
//!
//! Either way [`run`] executes it, catches a panic, and answers through the
//! responder, so every admitted request gets exactly one reply.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::metrics::{ExecStats, Metrics};
use super::pool::TaskQueue;
use super::reply::Responder;
use super::service::{ExecContext, Rejection, Service};

/// One request on its way from a dispatcher to a worker.
pub struct Task<S: Service> {
    request: S::Request,
    /// The reply obligation: dropping the task (a panic, a torn-down pool)
    /// still answers.
    responder: Responder<S>,
    /// When it was queued, to split queueing delay from service time.
    queued: Instant,
}

/// How requests run. See the module documentation.
pub enum Exec<S: Service> {
    /// Queued for the worker pool, bounded.
    Pool {
        /// The pool's queue.
        queue: Arc<TaskQueue<Task<S>>>,
        /// Queue length past which requests are answered OVERLOADED.
        bound: usize,
        /// Whether quick requests may run on the dispatcher.
        quick: bool,
    },
    /// Run by the thread that read it.
    Inline,
}

/// Quick requests one round of admissions may run on its dispatcher: enough
/// for a closed loop's lone request and a short burst, few enough that a
/// pipelined batch from one connection is spread over the workers rather
/// than run on its dispatcher while the other connections wait.
pub const QUICK_PER_ROUND: u32 = 4;

/// How long requests run in place may keep replies waiting so that they go
/// out together in one write. A thread that runs requests itself (inline,
/// thread-per-conn) writes the replies it has made before it starts a
/// request that is not quick ([`Service::is_quick`]), or any request once
/// the round has run this long: a reply that is ready never waits behind a
/// long request that happened to arrive in the same read, while a burst of
/// short ones (a GET is a microsecond or two) still shares one write.
pub const HOLD_REPLIES_FOR: Duration = Duration::from_micros(50);

/// A request that was not started: replies are waiting, and must be written
/// first (see [`HOLD_REPLIES_FOR`]). The caller offers it again after the write.
pub type NotNow<S> = (<S as Service>::Request, Responder<S>);

/// One round of admissions on a connection: its clock and what is left of
/// its quick-path allowance. The clock starts at the caller's reading and
/// moves to the end of each request run in the round, so the caller learns
/// when its replies were made, queueing delays run from the latest reading,
/// and neither costs a clock read of its own.
pub struct Round {
    start: Instant,
    clock: Cell<Instant>,
    quick_left: Cell<u32>,
    submitted: Cell<bool>,
}

impl Round {
    /// A round starting at `now`.
    pub fn new(now: Instant) -> Self {
        Round {
            start: now,
            clock: Cell::new(now),
            quick_left: Cell::new(QUICK_PER_ROUND),
            submitted: Cell::new(false),
        }
    }

    /// The latest clock reading: when the last request run in the round
    /// ended, or the round's start if none ran.
    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Whether replies already made may wait while `request` runs in place
    /// (see [`HOLD_REPLIES_FOR`]).
    fn replies_may_wait<S: Service>(&self, svc: &S, request: &S::Request) -> bool {
        svc.is_quick(request)
            && self.clock.get().saturating_duration_since(self.start) < HOLD_REPLIES_FOR
    }

    /// Whether any request was submitted in the round.
    pub fn submitted(&self) -> bool {
        self.submitted.get()
    }

    /// Takes one quick run from the allowance, if any is left.
    fn take_quick(&self) -> bool {
        let left = self.quick_left.get();
        self.quick_left.set(left.saturating_sub(1));
        left > 0
    }
}

impl<S: Service> Exec<S> {
    /// Runs or queues `request`. `ctx` describes the calling thread, used
    /// when it runs the request itself. A request that would run in place
    /// while its connection's replies wait to be written, and hold them up
    /// for long, is handed back instead: write them, then submit it again.
    pub fn submit(
        &self,
        svc: &S,
        metrics: &Metrics,
        ctx: &ExecContext<'_>,
        request: S::Request,
        responder: Responder<S>,
        round: &Round,
    ) -> Result<(), NotNow<S>> {
        round.submitted.set(true);
        match self {
            Exec::Inline => {
                if responder.replies_waiting() && !round.replies_may_wait(svc, &request) {
                    return Err((request, responder));
                }
                let ended = run(svc, request, responder, ctx, metrics.exec(ctx.slot), None);
                round.clock.set(ended);
            }
            Exec::Pool {
                queue,
                bound,
                quick,
            } => {
                if *quick && queue.nobody_ready() && svc.is_quick(&request) && round.take_quick() {
                    // Cheaper here than a worker's wake-up and the reply's.
                    let ended = run(svc, request, responder, ctx, metrics.exec(ctx.slot), None);
                    round.clock.set(ended);
                } else if queue.len() >= *bound {
                    metrics.shed.fetch_add(1, Relaxed);
                    responder.reject(&Rejection::Overloaded);
                } else {
                    queue.push(Task {
                        request,
                        responder,
                        queued: round.now(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Runs a queued task on a worker.
pub fn run_task<S: Service>(svc: &S, task: Task<S>, ctx: &ExecContext<'_>, stats: &ExecStats) {
    run(
        svc,
        task.request,
        task.responder,
        ctx,
        stats,
        Some(task.queued),
    );
}

/// Runs one request and answers it: with its response, or, if the service
/// panicked, with the service's INTERNAL answer. Records the queueing delay
/// (when it was queued) and the service time; returns when it ended (before
/// the answer was encoded).
fn run<S: Service>(
    svc: &S,
    request: S::Request,
    responder: Responder<S>,
    ctx: &ExecContext<'_>,
    stats: &ExecStats,
    queued: Option<Instant>,
) -> Instant {
    let start = Instant::now();
    if let Some(q) = queued {
        stats.queue_delay.record(start - q);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| svc.execute(request, ctx)));
    let ended = Instant::now();
    let took = ended - start;
    // In nanoseconds once, for both (a u128 product to convert).
    let took_ns = took.as_nanos().min(u64::MAX as u128) as u64;
    stats.service_time.record_ns(took_ns);
    stats.busy_ns.fetch_add(took_ns, Relaxed);
    match outcome {
        Ok(response) => responder.respond(&response),
        Err(_) => {
            tracing::error!(
                slot = ctx.slot,
                "a request handler panicked; answering INTERNAL"
            );
            responder.reject(&Rejection::Internal);
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_queued_kv_task_moves_without_a_memcpy_call() {
        // Moves of up to 128 bytes are inlined; a task is moved three times
        // per request (into the queue, out of it, into the worker).
        let size = std::mem::size_of::<super::Task<crate::kv::KvService>>();
        assert!(size <= 128, "a task is {size} bytes");
    }
}
