//! Setting up the server's own threads: which core each runs on, how the
//! kernel schedules it, and how precisely it sleeps. Every dispatcher, worker
//! and connection thread calls [`prepare`] first.

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
#[cfg(target_os = "linux")]
pub fn set_sched_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that the kernel
    // only reads during the call; pid 0 names the calling thread. There is
    // no safe wrapper in std or nix, and the measurement above is why it is
    // needed.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Scheduling policies are Linux's; elsewhere workers keep the default.
#[cfg(not(target_os = "linux"))]
pub fn set_sched_batch() -> std::io::Result<()> {
    Ok(())
}
