//! What recording one latency sample costs on the request path: ramkv's
//! log-linear histogram against the power-of-two histogram it replaced
//! (kept here, ten lines, only as the reference).
//!
//! `cargo bench --bench metrics_record -- [ROUNDS]`
//! Prints ns per sample for each, alternating, ROUNDS times (default 3).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ramkv::internals::LatencyHistogram;

/// The former `Log2Histogram`: one relaxed add into a power-of-two bucket.
struct PowerOfTwo([AtomicU64; 64]);

impl PowerOfTwo {
    fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let bucket = 64 - ns.leading_zeros() as usize;
        self.0[bucket.min(63)].fetch_add(1, Relaxed);
    }
}

const SAMPLES: u64 = 50_000_000;

/// Durations spread like request latencies, from 200 ns to about 2 ms.
fn sample(i: u64) -> Duration {
    Duration::from_nanos(200 + (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 43))
}

fn time(record: impl Fn(Duration)) -> f64 {
    let start = Instant::now();
    for i in 0..SAMPLES {
        record(black_box(sample(i)));
    }
    start.elapsed().as_nanos() as f64 / SAMPLES as f64
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let new = LatencyHistogram::default();
    let old = PowerOfTwo(std::array::from_fn(|_| AtomicU64::new(0)));
    println!("ns per sample, {SAMPLES} samples per cell");
    println!("round  power-of-two  log-linear");
    for r in 1..=rounds {
        let a = time(|d| old.record(d));
        let b = time(|d| new.record(d));
        println!("{r:>5}  {a:>12.2}  {b:>10.2}");
    }
    // Keep both histograms observably used.
    black_box((&old.0[0], &new));
}
