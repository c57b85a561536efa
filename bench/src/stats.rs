//! Statistics over repeated runs: the median of each figure with a
//! distribution-free confidence interval, and the check that flags a sweep
//! point whose tail latency fell while the load rose.
//!
//! On a shared machine a single run is an anecdote: absolute times move by
//! 30% between runs. `--repeat N` runs each point N times; each figure is
//! then reported as the median of the N runs with a 95% confidence interval
//! for that median. The interval is the order-statistic one (as Lancet and
//! Le Boudec's "Performance Evaluation of Computer and Communication
//! Systems" use): [x₍ₖ₎, x₍ₙ₊₁₋ₖ₎] covers the true median with probability
//! P(k ≤ B ≤ n−k), B ~ Binomial(n, ½), whatever the distribution. Below six
//! runs no k reaches 95%, so the interval is [min, max] and its actual level
//! (93.75% for 5 runs, 75% for 3) is reported with it.

/// A median and a confidence interval for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The sample median.
    pub median: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
    /// The probability that the interval covers the true median.
    pub level: f64,
}

/// The level the interval aims for.
pub const TARGET_LEVEL: f64 = 0.95;

/// P(B ≤ k) for B ~ Binomial(n, ½).
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut term = 0.5f64.powi(n as i32); // C(n,0)/2^n
    let mut sum = term;
    for i in 1..=k.min(n) {
        term *= (n - i + 1) as f64 / i as f64;
        sum += term;
    }
    sum
}

/// The coverage of [x₍ₖ₎, x₍ₙ₊₁₋ₖ₎] (1-based order statistics) for the median.
fn coverage(n: usize, k: usize) -> f64 {
    1.0 - 2.0 * binomial_half_cdf(n, k - 1)
}

/// The median of `samples` with its confidence interval; `None` when empty.
/// NaNs are ignored.
pub fn median_ci(samples: &[f64]) -> Option<Estimate> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // The widest interval that still reaches the target is the narrowest k
    // from the outside in: take the largest k whose coverage is enough.
    let k = (1..=n.div_ceil(2))
        .rev()
        .find(|&k| coverage(n, k) >= TARGET_LEVEL)
        .unwrap_or(1);
    Some(Estimate {
        median,
        lo: v[k - 1],
        hi: v[n - k],
        level: if n == 1 { 0.0 } else { coverage(n, k) },
    })
}

/// For points sorted by offered rate, each given as the interval
/// `(lo, hi)` of its p99 (a single run's value is its own interval), marks
/// every point whose p99 lies entirely below the interval of a point at a
/// lower rate. Tail latency does not fall as load rises; such a point shows
/// the machine's noise, not the server.
pub fn falls_below_lighter_load(intervals: &[(f64, f64)]) -> Vec<bool> {
    let mut highest_lo = f64::NEG_INFINITY;
    intervals
        .iter()
        .map(|&(lo, hi)| {
            let noise = hi < highest_lo;
            highest_lo = highest_lo.max(lo);
            noise
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_matches_the_binomial_tables() {
        // n = 5: [min, max] covers the median with 1 - 2/32.
        assert!((coverage(5, 1) - 0.9375).abs() < 1e-12);
        // n = 6: [min, max] reaches 1 - 2/64 = 0.96875.
        assert!((coverage(6, 1) - 0.96875).abs() < 1e-12);
        // n = 10, k = 2: 1 - 2 * (1 + 10) / 1024 = 0.978515625.
        assert!((coverage(10, 2) - 0.978515625).abs() < 1e-12);
    }

    #[test]
    fn medians_and_intervals() {
        let e = median_ci(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((e.median, e.lo, e.hi), (3.0, 1.0, 5.0));
        assert!((e.level - 0.75).abs() < 1e-12, "3 runs: only 75%");
        let e = median_ci(&(1..=10).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((e.median, e.lo, e.hi), (5.5, 2.0, 9.0));
        assert!(e.level >= TARGET_LEVEL);
        let e = median_ci(&[7.0]).unwrap();
        assert_eq!((e.median, e.lo, e.hi, e.level), (7.0, 7.0, 7.0, 0.0));
        assert_eq!(median_ci(&[]), None);
        assert_eq!(median_ci(&[f64::NAN, 2.0]).unwrap().median, 2.0);
    }

    #[test]
    fn a_p99_that_falls_beyond_the_intervals_is_noise() {
        // Rising load: 100, 120, then 60 whose interval is wholly below the
        // first point's, then 130 which overlaps.
        let flags =
            falls_below_lighter_load(&[(90.0, 110.0), (100.0, 140.0), (50.0, 80.0), (95.0, 150.0)]);
        assert_eq!(flags, [false, false, true, false]);
        // Overlapping intervals are not flagged, even if the median fell.
        assert_eq!(
            falls_below_lighter_load(&[(90.0, 110.0), (70.0, 100.0)]),
            [false, false]
        );
    }
}
