//! The shared request queue and the worker threads that drain it.
//!
//! ```text
//!  dispatchers ──push──▶ Injector (one FIFO for the whole pool, bounded by the caller)
//!                            │ steal: one task at a time
//!           ┌────────────────┼────────────────┐
//!       worker 0         worker 1   …     worker M-1     pinned; spin, then park
//! ```
//!
//! **No request waits behind a slow one while a worker is free.** A worker
//! takes one task at a time from the shared queue and keeps none of its own.
//! The work-stealing design it replaced moved up to four tasks at a time into
//! a worker's own deque, where they waited behind whatever that worker ran
//! unless a peer stole them, and peers looked there only after the shared
//! queue was empty: behind a 200 ms request, three 1 ms requests came back
//! after 190 later ones. Taking one task at a time costs no more instructions
//! or system calls per request and about 1% of peak throughput on one core
//! (`bench/results/2026-11-23-steal-policy-ab-2core.md`), and makes the rule
//! hold by construction, with any number of workers.
//!
//! **Parking never loses a wake-up.** A worker announces itself idle
//! (`Sleepers::announce`, a SeqCst store and fence), checks the queues once
//! more, and only then parks on a token-based `Parker`. A producer pushes,
//! fences, and reads the idle count: of the two fenced sides at least one
//! sees the other, so either the worker finds the task or the producer finds
//! the worker and unparks it. An unpark that lands before the park leaves a
//! token, and the park returns at once.
//!
//! **A spinning worker stands in for the parked ones.** While any worker is in
//! its spin window, a producer wakes nobody: the spinner will take the task,
//! and the dispatcher skips the lock and the futex. A spinner that finds work
//! leaves the window and, if the injector still holds tasks, wakes a parked
//! worker on its way out, so a burst does not wait behind the task it took.
//! Both sides fence between their write and their read (push, then spinner
//! count; count, then injector), so a task is never left with nobody looking.
//! Before this, every push woke another parked worker, so under steady load
//! every worker spun all the time, whatever the load.
//!
//! **At most [`MAX_SPINNERS`] spin at once.** The others park at once, so an
//! idle pool uses no CPU once the spin window has passed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal};
use crossbeam_utils::sync::{Parker, Unparker};

use super::metrics::{ExecStats, Metrics};
use super::thread::Threads;

/// Spin iterations between clock reads while idle.
const SPINS_PER_CLOCK_READ: u32 = 64;

/// Workers that may spin at once; the others park. One spinner catches the
/// next push without a futex wake, and a second covers the moment the first
/// leaves with a task. More would only poll the queue, pulling its cache
/// lines away from the dispatchers, and take cores that dispatchers and
/// clients could use.
pub const MAX_SPINNERS: usize = 2;

/// Which workers are parked, so a producer can wake exactly one.
struct Sleepers {
    idle: Mutex<Vec<usize>>,
    /// `idle.len()`, readable without the lock on every push.
    count: AtomicUsize,
    unparkers: Box<[Unparker]>,
}

impl Sleepers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, worker: usize) {
        let mut idle = self.lock();
        idle.push(worker);
        self.count.fetch_add(1, Ordering::SeqCst);
        drop(idle);
        fence(Ordering::SeqCst);
    }

    /// Takes `worker` off the idle list if a waker has not already done so.
    fn cancel(&self, worker: usize) {
        let mut idle = self.lock();
        if let Some(pos) = idle.iter().position(|&w| w == worker) {
            idle.swap_remove(pos);
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes one parked worker, if any. Cheap when none is parked.
    fn wake_one(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut idle = self.lock();
        if let Some(w) = idle.pop() {
            self.count.fetch_sub(1, Ordering::SeqCst);
            drop(idle);
            self.unparkers[w].unpark();
        }
    }

    fn wake_all(&self) {
        self.lock().clear();
        self.count.store(0, Ordering::SeqCst);
        self.unparkers.iter().for_each(Unparker::unpark);
    }
}

/// The producer side of the pool: what dispatchers push tasks into.
pub struct TaskQueue<T> {
    injector: Injector<T>,
    sleepers: Sleepers,
    /// Workers in their idle spin window, looking for work.
    spinning: AtomicUsize,
    shutdown: AtomicBool,
}

impl<T> TaskQueue<T> {
    /// Queues a task and, unless a worker is spinning and will take it,
    /// wakes a parked one.
    pub fn push(&self, task: T) {
        self.injector.push(task);
        fence(Ordering::SeqCst);
        if self.spinning.load(Ordering::SeqCst) == 0 {
            self.sleepers.wake_one();
        }
    }

    /// Takes one of the [`MAX_SPINNERS`] spinning slots, if one is free.
    fn try_start_spinning(&self) -> bool {
        self.spinning
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_SPINNERS).then_some(n + 1)
            })
            .is_ok()
    }

    /// A spinner found a task and leaves its window: tasks still in the
    /// injector may have been pushed while it counted as spinning, so make
    /// sure somebody is awake for them.
    fn stop_spinning_with_work(&self) {
        self.spinning.fetch_sub(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.injector.is_empty() {
            self.sleepers.wake_one();
        }
    }

    /// Tasks waiting in the global queue (not counting those already taken
    /// into a worker's own deque): what the queue bound is checked against.
    pub fn len(&self) -> usize {
        self.injector.len()
    }

    /// No task waits and no worker spins: a task pushed now would have to
    /// wake a parked worker, or wait for a busy one.
    pub fn nobody_ready(&self) -> bool {
        self.spinning.load(Ordering::Relaxed) == 0 && self.injector.is_empty()
    }

    /// Takes the oldest queued task, if any.
    fn find_task(&self) -> Option<T> {
        loop {
            match self.injector.steal() {
                Steal::Success(t) => return Some(t),
                Steal::Empty => return None,
                // Another worker took the slot first: look again.
                Steal::Retry => {}
            }
        }
    }
}

/// What a task handler learns about the worker running it.
pub struct WorkerCtx<'a> {
    /// The worker's index, 0..workers.
    pub index: usize,
    /// The worker's metrics slot.
    pub stats: &'a ExecStats,
}

/// How to run the pool.
pub struct PoolConfig {
    /// Worker threads to start (at least 1).
    pub workers: usize,
    /// How long an idle worker spins before parking.
    pub spin: Duration,
    /// The core for each worker, if pinned.
    pub cores: Vec<Option<core_affinity::CoreId>>,
    /// Run workers as `SCHED_BATCH`, for when they share cores with the
    /// dispatchers; see [`super::thread::set_sched_batch`].
    pub batch_sched: bool,
}

/// Worker threads draining a [`TaskQueue`].
pub struct WorkerPool<T> {
    queue: Arc<TaskQueue<T>>,
    threads: Threads,
}

impl<T: Send + 'static> WorkerPool<T> {
    /// Starts `cfg.workers` threads, each running `handler` on the tasks it takes.
    pub fn start<F>(cfg: PoolConfig, metrics: Arc<Metrics>, handler: F) -> std::io::Result<Self>
    where
        F: Fn(T, &WorkerCtx) + Send + Sync + 'static,
    {
        let n = cfg.workers.max(1);
        let parkers: Vec<Parker> = (0..n).map(|_| Parker::new()).collect();
        let queue = Arc::new(TaskQueue {
            injector: Injector::new(),
            sleepers: Sleepers {
                idle: Mutex::new(Vec::with_capacity(n)),
                count: AtomicUsize::new(0),
                unparkers: parkers.iter().map(|p| p.unparker().clone()).collect(),
            },
            spinning: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let handler = Arc::new(handler);
        let mut threads = Threads::default();
        // Each worker reports once it is pinned and scheduled as asked, so
        // that a started pool has no thread still setting itself up.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        for (i, parker) in parkers.into_iter().enumerate() {
            let (q, handler, metrics) = (queue.clone(), handler.clone(), metrics.clone());
            let core = cfg.cores.get(i).copied().flatten();
            let spin = cfg.spin;
            let batch_sched = cfg.batch_sched;
            let ready = ready_tx.clone();
            let spawned = threads.spawn(format!("ramkv-worker-{i}"), move || {
                super::thread::prepare(core);
                if batch_sched && let Err(e) = super::thread::set_sched_batch() {
                    tracing::warn!(worker = i, "cannot make the worker SCHED_BATCH: {e}");
                }
                let _ = ready.send(());
                let ctx = WorkerCtx {
                    index: i,
                    stats: metrics.exec(i),
                };
                run_worker(&q, &parker, spin, &ctx, &*handler);
            });
            if let Err(e) = spawned {
                // Leave nothing running: stop the workers already started.
                let started = WorkerPool { queue, threads };
                started.shutdown(Instant::now() + Duration::from_secs(60));
                return Err(e);
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            // Err only if a worker died before reporting; the pool still runs.
            let _ = ready_rx.recv();
        }
        Ok(WorkerPool { queue, threads })
    }

    /// The queue to push tasks into.
    pub fn queue(&self) -> &Arc<TaskQueue<T>> {
        &self.queue
    }

    /// Lets the workers finish every queued task, then stops and joins them,
    /// waiting no later than `deadline`: a worker still running a request
    /// then is left to finish it and exit on its own, and tasks still queued
    /// are dropped, which answers them INTERNAL. Call it after the producers
    /// have stopped.
    pub fn shutdown(self, deadline: Instant) {
        self.queue.shutdown.store(true, Ordering::SeqCst);
        self.queue.sleepers.wake_all();
        if !self.threads.join_by(deadline) {
            tracing::warn!("drain timeout: leaving workers behind that are still running requests");
        }
    }
}

fn run_worker<T, F: Fn(T, &WorkerCtx)>(
    q: &TaskQueue<T>,
    parker: &Parker,
    spin: Duration,
    ctx: &WorkerCtx,
    handler: &F,
) {
    let run = |task: T| {
        // A handler that panics loses its task but not the worker.
        if catch_unwind(AssertUnwindSafe(|| handler(task, ctx))).is_err() {
            tracing::error!(
                worker = ctx.index,
                "task handler panicked; worker continues"
            );
        }
    };
    // Spin only when this worker has run something since it last woke: a
    // worker that just started, or was woken for a task a peer took first,
    // has no reason to expect more work soon.
    let mut ran_since_wake = false;
    'outer: loop {
        if let Some(t) = q.find_task() {
            run(t);
            ran_since_wake = true;
            continue;
        }
        if !spin.is_zero() && ran_since_wake && q.try_start_spinning() {
            let deadline = Instant::now() + spin;
            while Instant::now() < deadline && !q.shutdown.load(Ordering::Relaxed) {
                for _ in 0..SPINS_PER_CLOCK_READ {
                    std::hint::spin_loop();
                }
                if let Some(t) = q.find_task() {
                    q.stop_spinning_with_work();
                    run(t);
                    continue 'outer;
                }
            }
            // Announcing fences, so the check below sees any task pushed by
            // a producer that still counted this worker as spinning.
            q.spinning.fetch_sub(1, Ordering::SeqCst);
        }
        q.sleepers.announce(ctx.index);
        if let Some(t) = q.find_task() {
            q.sleepers.cancel(ctx.index);
            run(t);
            continue;
        }
        if q.shutdown.load(Ordering::SeqCst) {
            q.sleepers.cancel(ctx.index);
            return;
        }
        ctx.stats.parks.fetch_add(1, Ordering::Relaxed);
        parker.park();
        ran_since_wake = false;
        q.sleepers.cancel(ctx.index);
        ctx.stats.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64};
    use std::sync::mpsc;

    /// A shutdown deadline no test should reach.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(120)
    }

    /// An unpinned pool of `workers` with the given spin window.
    fn test_pool(workers: usize, spin: Duration) -> PoolConfig {
        PoolConfig {
            workers,
            spin,
            cores: vec![],
            batch_sched: false,
        }
    }

    /// N producers and M workers: every task runs exactly once and nothing
    /// stalls. Producers pause between bursts so workers keep parking and
    /// being woken, which is where a lost wake-up would show.
    fn stress(workers: usize, spin: Duration) {
        const PRODUCERS: usize = 4;
        const BURSTS: usize = 200;
        const PER_BURST: usize = 50;
        let total = PRODUCERS * BURSTS * PER_BURST;
        let runs: Arc<Vec<AtomicU32>> = Arc::new((0..total).map(|_| AtomicU32::new(0)).collect());
        let (done_tx, done_rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::new(workers, 1));
        let cfg = test_pool(workers, spin);
        let pool = {
            let runs = runs.clone();
            let done_tx = Mutex::new(done_tx);
            WorkerPool::start(
                cfg,
                metrics.clone(),
                move |task: usize, _ctx: &WorkerCtx| {
                    runs[task].fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.lock().unwrap().send(());
                },
            )
            .unwrap()
        };
        std::thread::scope(|s| {
            for p in 0..PRODUCERS {
                let q = pool.queue().clone();
                s.spawn(move || {
                    for b in 0..BURSTS {
                        for k in 0..PER_BURST {
                            q.push((p * BURSTS + b) * PER_BURST + k);
                        }
                        // Let the workers drain and go idle now and then.
                        if b % 10 == 0 {
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        // Every task must complete; a lost wake-up shows as a stall here.
        for i in 0..total {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("stalled after {i} of {total} tasks"));
        }
        pool.shutdown(far());
        let wrong: Vec<usize> = (0..total)
            .filter(|&i| runs[i].load(Ordering::Relaxed) != 1)
            .collect();
        assert!(
            wrong.is_empty(),
            "tasks not run exactly once: {:?}",
            &wrong[..wrong.len().min(10)]
        );
    }

    #[test]
    fn every_task_runs_exactly_once_with_parking() {
        stress(3, Duration::ZERO);
    }

    #[test]
    fn every_task_runs_exactly_once_with_spinning() {
        stress(2, Duration::from_micros(50));
    }

    #[test]
    fn single_worker_never_stalls_across_park_cycles() {
        // One producer, one worker, one task at a time: each push must wake
        // the parked worker, thousands of times over.
        let metrics = Arc::new(Metrics::new(1, 1));
        let (tx, rx) = mpsc::channel::<u32>();
        let tx = Mutex::new(tx);
        let cfg = test_pool(1, Duration::ZERO);
        let pool = WorkerPool::start(cfg, metrics.clone(), move |t: u32, _: &WorkerCtx| {
            let _ = tx.lock().unwrap().send(t);
        })
        .unwrap();
        for i in 0..5_000 {
            pool.queue().push(i);
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(30)),
                Ok(i),
                "stalled at task {i}"
            );
        }
        pool.shutdown(far());
        assert!(
            metrics.exec(0).parks.load(Ordering::Relaxed) > 0,
            "the worker never parked"
        );
    }

    #[test]
    fn a_spinning_worker_takes_the_work_without_waking_the_others() {
        // Four parked workers and a long spin window. One task at a time,
        // each pushed once the previous one's worker is spinning again: the
        // first push wakes one worker, which then takes every later task, so
        // no other worker is woken. (When each push woke a parked worker, all
        // four were woken and spinning within a few tasks.)
        const WORKERS: usize = 4;
        let metrics = Arc::new(Metrics::new(WORKERS, 1));
        let (tx, rx) = mpsc::channel::<usize>();
        let tx = Mutex::new(tx);
        let cfg = test_pool(WORKERS, Duration::from_secs(5));
        let pool = WorkerPool::start(cfg, metrics.clone(), move |_: u32, ctx: &WorkerCtx| {
            let _ = tx.lock().unwrap().send(ctx.index);
        })
        .unwrap();
        let total = |f: fn(&ExecStats) -> &AtomicU64| -> u64 {
            (0..WORKERS)
                .map(|i| f(metrics.exec(i)).load(Ordering::Relaxed))
                .sum()
        };
        // Fresh workers park without spinning; wait until all have.
        let start = Instant::now();
        while total(|e| &e.parks) < WORKERS as u64 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "workers never parked"
            );
            std::thread::yield_now();
        }
        let mut ran_on = std::collections::HashSet::new();
        for i in 0..200 {
            if i > 0 {
                // The worker that ran task i-1 is back in its spin window.
                while pool.queue().spinning.load(Ordering::SeqCst) == 0 {
                    assert!(start.elapsed() < Duration::from_secs(60), "never spun");
                    std::thread::yield_now();
                }
            }
            pool.queue().push(i);
            let w = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("stalled at task {i}"));
            ran_on.insert(w);
        }
        let wakeups = total(|e| &e.wakeups);
        pool.shutdown(far());
        // One wake-up is needed; allow one spurious one.
        assert!(wakeups <= 2, "{wakeups} wake-ups for sequential tasks");
        assert!(ran_on.len() <= 2, "tasks ran on {} workers", ran_on.len());
    }

    /// Occupies all `workers` workers at once: each of `workers` tasks blocks
    /// until all of them run, then until the returned barrier is passed.
    fn occupy_every_worker(pool: &WorkerPool<Job>, workers: usize) -> Arc<std::sync::Barrier> {
        let release = Arc::new(std::sync::Barrier::new(workers + 1));
        let all_running = Arc::new(std::sync::Barrier::new(workers));
        for _ in 0..workers {
            let (release, all_running) = (release.clone(), all_running.clone());
            pool.queue().push(Box::new(move || {
                all_running.wait();
                release.wait();
            }));
        }
        release
    }

    type Job = Box<dyn FnOnce() + Send>;

    fn job_pool(workers: usize, spin: Duration) -> (WorkerPool<Job>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(workers, 1));
        let pool = WorkerPool::start(
            test_pool(workers, spin),
            metrics.clone(),
            |job: Job, _: &WorkerCtx| job(),
        )
        .unwrap();
        (pool, metrics)
    }

    #[test]
    fn no_task_waits_behind_a_slow_one_while_a_worker_is_free() {
        // Both workers busy, then a 200 ms task and 300 short ones queued
        // behind it, then both released at once: one worker takes the slow
        // task, the other must take the short ones in order. (With batch
        // stealing, the slow task's worker took three short ones into its own
        // deque, and they finished after it, at ~200 ms.)
        let (pool, _) = job_pool(2, Duration::ZERO);
        let release = occupy_every_worker(&pool, 2);
        let (tx, rx) = mpsc::channel::<usize>();
        let tx = Arc::new(Mutex::new(tx));
        for id in 0..=300usize {
            let tx = tx.clone();
            let took = if id == 0 { 200 } else { 1 };
            pool.queue().push(Box::new(move || {
                std::thread::sleep(Duration::from_millis(took));
                let _ = tx.lock().unwrap().send(id);
            }));
        }
        release.wait();
        let order: Vec<usize> = (0..=300)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(60))
                    .expect("a task stalled")
            })
            .collect();
        pool.shutdown(far());
        let slow_at = order.iter().position(|&id| id == 0).unwrap();
        // Everything answered before the slow task is short tasks 1..=k, in
        // arrival order, with 1, 2 and 3 among them.
        assert!(
            slow_at >= 3,
            "the slow task finished {slow_at}th: {:?}",
            &order[..10]
        );
        assert_eq!(order[..slow_at], (1..=slow_at).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn at_most_max_spinners_spin_and_the_rest_park() {
        // Eight workers that have all just run something, and a spin window
        // longer than the hang guard below: only MAX_SPINNERS may spin, the
        // others must park at once (shutdown ends the spinners early).
        const WORKERS: usize = 8;
        let (pool, _) = job_pool(WORKERS, Duration::from_secs(600));
        occupy_every_worker(&pool, WORKERS).wait();
        let start = Instant::now();
        while pool.queue().sleepers.count.load(Ordering::SeqCst) < WORKERS - MAX_SPINNERS {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "only {} of {WORKERS} workers parked",
                pool.queue().sleepers.count.load(Ordering::SeqCst)
            );
            std::thread::yield_now();
        }
        assert!(pool.queue().spinning.load(Ordering::SeqCst) <= MAX_SPINNERS);
        pool.shutdown(far());
    }

    #[test]
    fn idle_workers_all_park_once_the_spin_window_passes() {
        // After a burst the spinners give up after their window and park, so
        // an idle pool uses no CPU: nobody spins, everybody sleeps.
        const WORKERS: usize = 4;
        let (pool, _) = job_pool(WORKERS, Duration::from_millis(20));
        occupy_every_worker(&pool, WORKERS).wait();
        let start = Instant::now();
        while pool.queue().sleepers.count.load(Ordering::SeqCst) < WORKERS {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "workers never parked"
            );
            std::thread::yield_now();
        }
        assert_eq!(pool.queue().spinning.load(Ordering::SeqCst), 0);
        pool.shutdown(far());
    }

    #[test]
    fn a_panicking_task_does_not_kill_its_worker() {
        let metrics = Arc::new(Metrics::new(1, 1));
        let (tx, rx) = mpsc::channel::<u32>();
        let tx = Mutex::new(tx);
        let cfg = test_pool(1, Duration::ZERO);
        let pool = WorkerPool::start(cfg, metrics, move |t: u32, _: &WorkerCtx| {
            assert_ne!(t, 0, "task 0 panics on purpose");
            let _ = tx.lock().unwrap().send(t);
        })
        .unwrap();
        pool.queue().push(0);
        pool.queue().push(1);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok(1),
            "the only worker died"
        );
        pool.shutdown(far());
    }

    #[test]
    fn shutdown_drains_queued_tasks() {
        let metrics = Arc::new(Metrics::new(2, 1));
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let cfg = test_pool(2, Duration::ZERO);
        let pool = WorkerPool::start(cfg, metrics, move |_: u8, _: &WorkerCtx| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        for _ in 0..10_000 {
            pool.queue().push(0);
        }
        pool.shutdown(far());
        assert_eq!(count.load(Ordering::Relaxed), 10_000);
    }
}
