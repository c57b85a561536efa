//! The open loop offers the rate it is asked for, and reports how well it
//! kept its schedule. In its own test binary, so nothing else in the suite
//! runs beside it (cargo runs test binaries one at a time).

mod common;

use std::time::Duration;

use common::*;
use ramkv_bench::engine::{self, Mode};

#[test]
fn the_schedule_is_offered_and_answered_at_2k_and_20k_per_second() {
    let srv = ramkv_server();
    let target = format!("ramkv://{}", srv.local_addr());
    for rate in [2_000.0, 20_000.0] {
        let mut cfg = config(&target, Mode::Open { rate }, Duration::from_secs(3));
        cfg.connections = 4;
        let r = engine::run(&cfg, &workload()).unwrap();
        let expected = rate * 3.0;
        // The Poisson schedule itself: within 5 standard deviations
        // (sqrt(n)) of rate × duration, so the offered load is the one asked for.
        let sd = expected.sqrt();
        assert!(
            (r.sent as f64 - expected).abs() < 5.0 * sd,
            "{rate}/s: the schedule held {} requests, expected {expected}",
            r.sent
        );
        // Everything scheduled was sent and answered: the achieved rate is
        // within 2% of the rate the schedule offered.
        assert_eq!((r.errors.total(), r.timeouts), (0, 0), "{rate}/s");
        let ratio = r.completed as f64 / r.sent as f64;
        assert!((0.98..=1.0).contains(&ratio), "{rate}/s: {ratio}");
        // Adherence is reported for every run, and is a share.
        let a = r.adherence().expect("an open loop reports adherence");
        assert!((0.0..=1.0).contains(&a));
        assert!(r.sent_on_time <= r.sent);
        assert!(r.generator.cpu_cores > 0.0);
    }
    srv.shutdown();
}
