//! The generator's own CPU use, from `getrusage`, so a run can say whether the
//! generator or the machine held it back.
//!
//! `RUSAGE_SELF` gives the whole process's CPU (what `generator_cpu` reports);
//! `RUSAGE_THREAD` gives one generator thread's CPU and how often the kernel
//! took the CPU away from it (involuntary context switches).

use std::time::Duration;

use nix::sys::resource::{Usage, UsageWho, getrusage};
use nix::sys::time::TimeVal;

/// CPU time and preemptions of a process or thread at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSample {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Times the kernel switched this thread or process out while it could still run.
    pub preempted: u64,
}

impl CpuSample {
    /// The calling process, all threads together.
    pub fn process() -> CpuSample {
        Self::of(UsageWho::RUSAGE_SELF)
    }

    /// The calling thread alone.
    pub fn thread() -> CpuSample {
        Self::of(UsageWho::RUSAGE_THREAD)
    }

    fn of(who: UsageWho) -> CpuSample {
        // getrusage fails only for an invalid `who`; both used here are valid.
        getrusage(who).map_or_else(|_| CpuSample::default(), |u| Self::from_usage(&u))
    }

    fn from_usage(u: &Usage) -> CpuSample {
        let d = |t: TimeVal| {
            Duration::from_secs(t.tv_sec().max(0) as u64)
                + Duration::from_micros(t.tv_usec().max(0) as u64)
        };
        CpuSample {
            cpu: d(u.user_time()) + d(u.system_time()),
            preempted: u.involuntary_context_switches().max(0) as u64,
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            preempted: self.preempted.saturating_sub(earlier.preempted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_its_cpu_time() {
        let before = CpuSample::thread();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let used = CpuSample::thread().since(&before);
        // getrusage has tick-or-better resolution: allow 10 ms of slack.
        assert!(used.cpu >= Duration::from_millis(20), "{used:?}");
        assert!(CpuSample::process().cpu >= used.cpu);
    }
}
