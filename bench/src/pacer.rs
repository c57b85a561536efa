//! Waiting for the next scheduled send without burning a core.
//!
//! The open-loop schedule needs microsecond timing, but tokio's timer has
//! millisecond resolution, and spinning on `yield_now` costs an
//! `epoll_wait(…, 0)` per iteration and a whole core. So, by default, the
//! pacer sleeps until `spin` before the send on an *absolute*
//! `CLOCK_MONOTONIC` deadline (hrtimer precision), then busy-waits the rest
//! on the vDSO clock, which makes no system call. It sleeps one of two ways:
//!
//! - **blocking** (`clock_nanosleep`), when the thread has nothing else to
//!   wait for: the open loop over plain TCP, whose sockets are read only when
//!   the pacer wakes (see [`crate::engine`]). One system call, one wake-up.
//! - on a **timerfd** in the tokio runtime, when reader tasks must run while
//!   it waits (TLS). The runtime's `epoll_wait` returns when it fires.
//!
//! [`Pacing::Spin`] never sleeps: it is for a generator with cores of its
//! own, where the last microseconds of wake-up latency matter more than CPU.
//! The generator's threads also set their timer slack to 1 ns, so that what
//! sleeping they do is not rounded up by the default 50 µs slack.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How the generator waits for the next send.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Sleep on a precise timer until `spin` before the send, then busy-wait.
    Sleep {
        /// How long before each send to stop sleeping and start spinning.
        spin: Duration,
    },
    /// Never sleep: poll the runtime and spin. For dedicated cores.
    Spin,
}

impl Pacing {
    /// The default: sleep, waking 20 µs early. Measured on the 2-core VM
    /// (`bench/results/2026-11-23-pacing-2core.md`), it keeps send lateness
    /// low at a few percent of a core at 2,000 req/s.
    pub const DEFAULT: Pacing = Pacing::Sleep {
        spin: Duration::from_micros(20),
    };

    /// Parses `sleep`, `sleep:SPIN` (e.g. `sleep:50us`) or `spin`.
    pub fn parse(s: &str) -> Result<Pacing, String> {
        match s.split_once(':') {
            None if s == "spin" => Ok(Pacing::Spin),
            None if s == "sleep" => Ok(Pacing::DEFAULT),
            Some(("sleep", d)) => crate::dist::parse_duration(d)
                .map(|spin| Pacing::Sleep { spin })
                .map_err(|e| format!("--pacing {e}")),
            _ => Err(format!(
                "--pacing '{s}': use sleep, sleep:SPIN (e.g. sleep:20us) or spin"
            )),
        }
    }
}

/// Below this much time to go, spin mode stops polling the runtime and spins.
const SPIN_ONLY_NS: u64 = 2_000;

/// A timerfd that tokio can wait on.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// How the pacer sleeps.
enum Sleeper {
    /// Spin mode: it does not.
    None,
    /// `clock_nanosleep`: the thread has nothing else to do meanwhile.
    Blocking,
    /// A timerfd the runtime waits on, so other tasks run meanwhile.
    Timer(AsyncFd<Timer>),
}

/// Waits for deadlines given in nanoseconds since the run's start.
pub struct Pacer {
    pacing: Pacing,
    sleeper: Sleeper,
    /// `CLOCK_MONOTONIC` at the run's start: deadlines are offsets from it.
    base: TimeSpec,
}

impl Pacer {
    /// A pacer for deadlines measured from `base` (`CLOCK_MONOTONIC`, read
    /// together with the `Instant` the caller's clock counts from). With
    /// `blocking`, it sleeps in `clock_nanosleep` and the runtime does not
    /// run meanwhile; else it must be created inside the tokio runtime that
    /// will await it.
    pub fn new(pacing: Pacing, base: TimeSpec, blocking: bool) -> io::Result<Pacer> {
        let sleeper = match pacing {
            Pacing::Spin => Sleeper::None,
            Pacing::Sleep { .. } if blocking => Sleeper::Blocking,
            Pacing::Sleep { .. } => {
                let fd = TimerFd::new(
                    ClockId::CLOCK_MONOTONIC,
                    TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
                )?;
                // SAFETY: tokio's I/O-safety contract: the descriptor must stay
                // open, and `as_raw_fd` must keep returning it, for the
                // AsyncFd's whole life. The AsyncFd owns the `Timer`, which
                // owns the timerfd's OwnedFd and returns that one descriptor;
                // nothing else closes or replaces it. Why a timerfd at all:
                // tokio's own timer has 1 ms resolution, and the busy-yield
                // it replaced cost a whole core at 2,000 req/s.
                let registered =
                    unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) };
                Sleeper::Timer(registered.map_err(io::Error::from)?)
            }
        };
        Ok(Pacer {
            pacing,
            sleeper,
            base,
        })
    }

    /// True when a wait of `left` ns would be spun through without yielding
    /// to the runtime.
    pub fn spins_through(&self, left: u64) -> bool {
        match self.pacing {
            Pacing::Sleep { spin } => left <= spin.as_nanos() as u64,
            Pacing::Spin => left <= SPIN_ONLY_NS,
        }
    }

    /// Returns once `clock()` has reached `deadline` (ns since the start).
    pub async fn until(&self, deadline: u64, clock: impl Fn() -> u64) -> io::Result<()> {
        loop {
            let now = clock();
            if now >= deadline {
                return Ok(());
            }
            let left = deadline - now;
            match (self.pacing, &self.sleeper) {
                (Pacing::Sleep { spin }, sleeper) if left > spin.as_nanos() as u64 => {
                    let wake = deadline - spin.as_nanos() as u64;
                    match sleeper {
                        Sleeper::Timer(timer) => self.sleep_until(timer, wake).await?,
                        _ => self.block_until(wake)?,
                    }
                }
                (Pacing::Spin, _) if left > SPIN_ONLY_NS => tokio::task::yield_now().await,
                _ => {
                    // No system call in here: the clock is read through the vDSO.
                    while clock() < deadline {
                        std::hint::spin_loop();
                    }
                    return Ok(());
                }
            }
        }
    }

    fn at(&self, ns: u64) -> TimeSpec {
        self.base + TimeSpec::from_duration(Duration::from_nanos(ns))
    }

    fn block_until(&self, at: u64) -> io::Result<()> {
        let flags = nix::time::ClockNanosleepFlags::TIMER_ABSTIME;
        match nix::time::clock_nanosleep(nix::time::ClockId::CLOCK_MONOTONIC, flags, &self.at(at)) {
            // A signal cut the sleep short: the caller's loop sleeps again.
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn sleep_until(&self, timer: &AsyncFd<Timer>, at: u64) -> io::Result<()> {
        let when = self.at(at);
        timer.get_ref().0.set(
            Expiration::OneShot(when),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        // Re-arming resets the expiry count, and each expiry is a fresh edge
        // for epoll, so the timerfd never needs to be read.
        let mut ready = timer.readable().await?;
        ready.clear_ready();
        Ok(())
    }
}

/// Sets the calling thread's timer slack to 1 ns, so sleeps and `epoll_wait`
/// timeouts are not rounded up by the default 50 µs. Best effort.
pub fn minimal_timer_slack() {
    let _ = nix::sys::prctl::set_timerslack(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn pacing_parses() {
        assert_eq!(Pacing::parse("spin"), Ok(Pacing::Spin));
        assert_eq!(Pacing::parse("sleep"), Ok(Pacing::DEFAULT));
        assert_eq!(
            Pacing::parse("sleep:50us"),
            Ok(Pacing::Sleep {
                spin: Duration::from_micros(50)
            })
        );
        assert!(Pacing::parse("nap").is_err());
        assert!(Pacing::parse("sleep:soon").is_err());
    }

    #[test]
    fn a_sleep_is_never_early_and_costs_little_cpu() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            minimal_timer_slack();
            let start = Instant::now();
            let base = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
            let clock = || start.elapsed().as_nanos() as u64;
            let cpu = crate::usage::CpuSample::thread();
            for blocking in [false, true] {
                let pacer = Pacer::new(Pacing::DEFAULT, base, blocking).unwrap();
                for i in 1..=25u64 {
                    // Every 2 ms, for 50 ms per kind of sleep.
                    let deadline = (i + if blocking { 25 } else { 0 }) * 2_000_000;
                    pacer.until(deadline, clock).await.unwrap();
                    let now = clock();
                    assert!(now >= deadline, "woke {} ns early", deadline - now);
                }
            }
            let used = crate::usage::CpuSample::thread().since(&cpu).cpu;
            // Spinning the whole 100 ms would use 100 ms; sleeping uses a
            // sliver. A loose bound: this is a shared machine.
            assert!(used < Duration::from_millis(50), "used {used:?} of CPU");
        });
    }
}
