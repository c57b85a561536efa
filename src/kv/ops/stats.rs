//! STATS: every figure of the runtime and of the service, as the admin
//! endpoint serves them.

use ramkv_proto::{self as pb, response::Result as Res};

use super::{Outcome, ok};
use crate::kv::KvService;
use crate::runtime::service::{ExecContext, Service};

pub(super) fn run(svc: &KvService, ctx: &ExecContext<'_>) -> Outcome {
    let mut figures = Vec::new();
    (ctx.runtime)(&mut figures);
    svc.figures(&mut figures);
    ok(Res::Stats(pb::StatsResult {
        metrics: figures
            .into_iter()
            .map(|(name, value)| pb::Metric { name, value })
            .collect(),
    }))
}
