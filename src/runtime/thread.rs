//! Setting up the server's own threads: which core each runs on, how the
//! kernel schedules it, and how precisely it sleeps. Every dispatcher, worker
//! and connection thread calls [`prepare`] first; dispatchers and workers are
//! started as [`Threads`], which shutdown waits for no longer than the drain
//! timeout.

/// Pins the calling thread to `core`, if given, and sets its timer slack to
/// 1 ns. The slack matters to threads that sleep while serving: the SPIN
/// op's sleep mode (an I/O-bound handler) would otherwise wake up to 50 µs
/// late, the kernel's default slack, on top of the time asked for.
pub fn prepare(core: Option<core_affinity::CoreId>) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// Makes the calling thread `SCHED_BATCH`. The kernel then does not let it
/// preempt the running thread when it is woken. On a core shared with a
/// dispatcher, a push would otherwise switch to the worker in the middle of
/// the dispatcher's round, once per request; as a batch thread the worker
/// waits until the dispatcher blocks, then drains everything it queued. On one
/// shared core that raised lb's peak 1.2–2.0× (median 1.42×) and lowered its
/// p99 under load in 6 of 7 pairs, at the same CPU per request, for about
/// 10 µs more at low load (`bench/results/2026-11-23-worker-sched-batch-1core.md`).
pub fn set_sched_batch() -> std::io::Result<()> {
    set_policy(Policy::Batch)
}

/// Makes the calling thread `SCHED_IDLE`: it runs on what the serving
/// threads leave of a core, and a woken dispatcher or worker takes the core
/// from it at once. For the TLS handshake threads: established traffic comes
/// first, and under sustained full load new TLS clients wait (up to
/// `--frame-timeout`). With the server on one core, a storm of handshakes
/// raised established traffic's p99 to 2.3 ms instead of 4.4 ms at normal
/// priority and 3.3 ms at nice 19
/// (`bench/results/2026-11-23-tls-handshake-burst-2core.md`).
pub fn set_sched_idle() -> std::io::Result<()> {
    set_policy(Policy::Idle)
}

enum Policy {
    Batch,
    Idle,
}

#[cfg(target_os = "linux")]
fn set_policy(policy: Policy) -> std::io::Result<()> {
    let policy = match policy {
        Policy::Batch => libc::SCHED_BATCH,
        Policy::Idle => libc::SCHED_IDLE,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that the kernel
    // only reads during the call; pid 0 names the calling thread. There is
    // no safe wrapper in std or nix, and the measurements above are why it
    // is needed.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Scheduling policies are Linux's; elsewhere threads keep the default.
#[cfg(not(target_os = "linux"))]
fn set_policy(_: Policy) -> std::io::Result<()> {
    Ok(())
}

/// Threads that shutdown can wait for with a deadline. `JoinHandle::join`
/// cannot time out, so each thread also reports its exit on a channel (from a
/// guard, so a thread that panics reports too); [`Threads::join_by`] counts
/// the reports, joins the threads if all came in time, and otherwise leaves
/// the stragglers to finish on their own.
pub struct Threads {
    handles: Vec<std::thread::JoinHandle<()>>,
    exit_tx: std::sync::mpsc::Sender<()>,
    /// In a mutex only so that the owner can be shared between threads.
    exited: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// Sends the exit report when the thread's closure returns or unwinds.
struct ExitReport(std::sync::mpsc::Sender<()>);

impl Drop for ExitReport {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Default for Threads {
    fn default() -> Self {
        let (exit_tx, exited) = std::sync::mpsc::channel();
        Threads {
            handles: Vec::new(),
            exit_tx,
            exited: std::sync::Mutex::new(exited),
        }
    }
}

impl Threads {
    /// Starts a thread named `name` running `f`.
    pub fn spawn(
        &mut self,
        name: String,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let report = ExitReport(self.exit_tx.clone());
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _report = report;
            f()
        })?;
        self.handles.push(handle);
        Ok(())
    }

    /// Waits for every thread to exit, but no later than `deadline`. Returns
    /// whether they all did.
    pub fn join_by(self, deadline: std::time::Instant) -> bool {
        let Threads {
            handles, exited, ..
        } = self;
        let exited = exited.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..handles.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if exited.recv_timeout(left).is_err() {
                return false;
            }
        }
        for h in handles {
            let _ = h.join();
        }
        true
    }
}
