//! GET: the value and version of a key, or NOT_FOUND.

use ramkv_proto::{self as pb, Status, response::Result as Res};

use super::{Outcome, check_key, ok};
use crate::kv::{KvService, error_response};

pub(super) fn run(svc: &KvService, g: pb::Get) -> Outcome {
    check_key(svc, &g.key)?;
    match svc.store.get(&g.key) {
        Some(e) => ok(Res::Get(pb::GetResult {
            value: e.value,
            version: e.version,
        })),
        None => Ok(error_response(0, Status::NotFound, "")),
    }
}
