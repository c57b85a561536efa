//! PING: echoes its payload.

use ramkv_proto::{self as pb, response::Result as Res};

use super::{Outcome, ok};

pub(super) fn run(p: pb::Ping) -> Outcome {
    ok(Res::Ping(pb::PingResult { payload: p.payload }))
}
