//! The random distributions a workload draws from: keys, arrivals, value
//! sizes and service times. Each parses from the string the command line uses.

use std::time::Duration;

use rand::Rng;

/// Zipf-distributed ranks: rank 0 is the most popular, with probability
/// proportional to 1/(rank+1)^θ. Sampled exactly (rand_distr's
/// rejection-inversion), where YCSB's own generator approximates: its error
/// at rank 2 is about 18% for θ = 0.99.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    zetan: f64,
    sampler: rand_distr::Zipf<f64>,
}

/// ζ(n, θ) = Σ_{i=1..n} 1/i^θ.
pub fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Ranks 0..n with skew `theta` (> 0; YCSB uses 0.99).
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let n = n.max(1);
        Zipfian {
            n,
            theta,
            zetan: zeta(n, theta),
            // Cannot fail: n ≥ 1 and θ > 0 are checked by the callers' parsers.
            sampler: rand_distr::Zipf::new(n as f64, theta)
                .unwrap_or_else(|_| unreachable!("n >= 1, theta > 0")),
        }
    }

    /// The exact probability of `rank` under this distribution.
    pub fn probability(&self, rank: u64) -> f64 {
        1.0 / ((rank + 1) as f64).powf(self.theta) / self.zetan
    }

    /// Draws a rank.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        (rand_distr::Distribution::sample(&self.sampler, rng) as u64)
            .saturating_sub(1)
            .min(self.n - 1)
    }
}

/// 64-bit FNV-1a, as YCSB scrambles ranks with.
fn fnv1a(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How keys are chosen.
#[derive(Clone, Debug)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Scrambled Zipfian: Zipf ranks hashed over the key space, so the hot
    /// keys are scattered instead of adjacent.
    Zipf(Zipfian),
}

impl KeyDist {
    /// Parses `uniform` or `zipf:THETA` for a key space of `keys`.
    pub fn parse(s: &str, keys: u64) -> Result<KeyDist, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(KeyDist::Uniform),
            Some(("zipf", t)) => {
                let theta: f64 = t.parse().map_err(|_| format!("bad Zipf θ in '{s}'"))?;
                if !(theta > 0.0 && theta.is_finite()) {
                    return Err(format!("Zipf θ must be positive, got {theta}"));
                }
                Ok(KeyDist::Zipf(Zipfian::new(keys, theta)))
            }
            _ => Err(format!("'{s}': use uniform or zipf:THETA")),
        }
    }

    /// Draws a key index in 0..keys.
    pub fn sample(&self, keys: u64, rng: &mut impl Rng) -> u64 {
        match self {
            KeyDist::Uniform => rng.random_range(0..keys),
            KeyDist::Zipf(z) => fnv1a(z.sample(rng)) % keys,
        }
    }
}

/// Exponential inter-arrival gaps: a Poisson process at `rate` per second.
pub fn poisson_gap_ns(rate: f64, rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random();
    -(1.0 - u).ln() / rate * 1e9
}

/// A distribution of byte sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum SizeDist {
    /// Always this many bytes.
    Fixed(usize),
    /// Uniform between the two bounds, inclusive.
    Uniform(usize, usize),
    /// Generalized Pareto (location 0), capped at `max`: Facebook ETC's values.
    GPareto {
        /// Scale σ.
        sigma: f64,
        /// Shape ξ.
        xi: f64,
        /// Largest size drawn.
        max: usize,
    },
    /// `a` bytes with probability `p`, else `b`.
    Mix {
        /// Probability of `a`.
        p: f64,
        /// The common size.
        a: usize,
        /// The other size.
        b: usize,
    },
}

impl SizeDist {
    /// Parses `N`, `uniform:A:B`, `gpareto:SIGMA:XI:MAX` or `mix:P:A:B`.
    pub fn parse(s: &str) -> Result<SizeDist, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<f64, String> {
            parts
                .get(i)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("bad size distribution '{s}'"))
        };
        Ok(match parts[0] {
            "uniform" => SizeDist::Uniform(num(1)? as usize, num(2)? as usize),
            "gpareto" => SizeDist::GPareto {
                sigma: num(1)?,
                xi: num(2)?,
                max: num(3)? as usize,
            },
            "mix" => SizeDist::Mix {
                p: num(1)?,
                a: num(2)? as usize,
                b: num(3)? as usize,
            },
            _ if parts.len() == 1 => SizeDist::Fixed(num(0)? as usize),
            _ => {
                return Err(format!(
                    "'{s}': use N, uniform:A:B, gpareto:SIGMA:XI:MAX or mix:P:A:B"
                ));
            }
        })
    }

    /// The largest size this can draw.
    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => a.max(b),
            SizeDist::GPareto { max, .. } => max,
            SizeDist::Mix { a, b, .. } => a.max(b),
        }
    }

    /// Draws a size.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => rng.random_range(a.min(b)..=a.max(b)),
            SizeDist::GPareto { sigma, xi, max } => {
                let u: f64 = rng.random();
                let x = sigma * ((1.0 - u).powf(-xi) - 1.0) / xi;
                (x as usize).clamp(1, max)
            }
            SizeDist::Mix { p, a, b } => {
                if rng.random_bool(p.clamp(0.0, 1.0)) {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// Service times for the server's SPIN op.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceDist {
    /// Always this long.
    Fixed(Duration),
    /// Exponential with this mean.
    Exp(Duration),
    /// `a` with probability `p`, else `b`.
    Bimodal {
        /// Probability of `a`.
        p: f64,
        /// The common (short) time.
        a: Duration,
        /// The other (long) time.
        b: Duration,
    },
}

impl ServiceDist {
    /// Parses `fixed:D`, `exp:MEAN` or `bimodal:P:A:B` (durations like 500ns, 10us).
    pub fn parse(s: &str) -> Result<ServiceDist, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let d = |i: usize| {
            parts
                .get(i)
                .ok_or_else(|| format!("'{s}' is missing a duration"))
                .and_then(|p| parse_duration(p))
        };
        Ok(match parts[0] {
            "fixed" => ServiceDist::Fixed(d(1)?),
            "exp" => ServiceDist::Exp(d(1)?),
            "bimodal" => {
                let p: f64 = parts
                    .get(1)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad probability in '{s}'"))?;
                ServiceDist::Bimodal {
                    p,
                    a: d(2)?,
                    b: d(3)?,
                }
            }
            _ => return Err(format!("'{s}': use fixed:D, exp:MEAN or bimodal:P:A:B")),
        })
    }

    /// The mean service time.
    pub fn mean(&self) -> Duration {
        match *self {
            ServiceDist::Fixed(d) | ServiceDist::Exp(d) => d,
            ServiceDist::Bimodal { p, a, b } => a.mul_f64(p) + b.mul_f64(1.0 - p),
        }
    }

    /// Draws a service time in nanoseconds.
    pub fn sample_ns(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            ServiceDist::Fixed(d) => d.as_nanos() as u64,
            ServiceDist::Exp(mean) => {
                let u: f64 = rng.random();
                (-(1.0 - u).ln() * mean.as_nanos() as f64) as u64
            }
            ServiceDist::Bimodal { p, a, b } => {
                if rng.random_bool(p.clamp(0.0, 1.0)) {
                    a.as_nanos() as u64
                } else {
                    b.as_nanos() as u64
                }
            }
        }
    }
}

/// Parses a duration such as `500ns`, `2.5us` or `1s` (humantime's syntax,
/// shared by every flag of every ramkv binary).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (use e.g. 500us or 5s)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipf_top_ranks_match_theory() {
        let z = Zipfian::new(10_000, 0.99);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        const N: usize = 2_000_000;
        let mut counts = [0u64; 10];
        for _ in 0..N {
            let r = z.sample(&mut rng);
            if r < 10 {
                counts[r as usize] += 1;
            }
        }
        for (rank, &c) in counts.iter().enumerate() {
            let got = c as f64 / N as f64;
            let want = z.probability(rank as u64);
            // Rank 9 expects ~27,000 hits: 3% is over 4 standard deviations.
            assert!(
                (got - want).abs() / want < 0.03,
                "rank {rank}: {got:.5} vs {want:.5}"
            );
        }
    }

    #[test]
    fn scrambling_spreads_hot_keys_but_keeps_the_skew() {
        let d = KeyDist::parse("zipf:0.99", 1000).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut counts = vec![0u64; 1000];
        for _ in 0..200_000 {
            counts[d.sample(1000, &mut rng) as usize] += 1;
        }
        let hottest = (0..1000).max_by_key(|&i| counts[i]).unwrap();
        assert_ne!(hottest, 0, "the hottest key should not be key 0");
        let max = counts[hottest] as f64 / 200_000.0;
        // Rank 0's share for n=1000, θ=0.99 is about 13%.
        assert!((0.10..0.20).contains(&max), "{max}");
    }

    #[test]
    fn poisson_gaps_have_the_right_mean_and_variance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let rate = 50_000.0;
        let gaps: Vec<f64> = (0..400_000)
            .map(|_| poisson_gap_ns(rate, &mut rng))
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let want_mean = 1e9 / rate;
        assert!(
            (mean / want_mean - 1.0).abs() < 0.01,
            "mean {mean} vs {want_mean}"
        );
        // Exponential: variance = mean².
        assert!(
            (var / (want_mean * want_mean) - 1.0).abs() < 0.03,
            "variance {var}"
        );
    }

    #[test]
    fn specs_parse() {
        assert_eq!(SizeDist::parse("100"), Ok(SizeDist::Fixed(100)));
        assert_eq!(
            SizeDist::parse("mix:0.95:100:65536"),
            Ok(SizeDist::Mix {
                p: 0.95,
                a: 100,
                b: 65536
            })
        );
        assert!(SizeDist::parse("lots").is_err());
        let s = ServiceDist::parse("bimodal:0.995:500ns:500us").unwrap();
        let mean_ns = s.mean().as_nanos() as i64;
        assert!((mean_ns - 2_997).abs() <= 1, "{mean_ns}");
        assert!(ServiceDist::parse("exp:10").is_err());
        assert!(KeyDist::parse("zipf:-1", 10).is_err());
    }
}
