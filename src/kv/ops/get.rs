//! GET: the value and version of a key, or NOT_FOUND. A found item is
//! answered from the store's own block (see `kv::reply`).

use ramkv_proto::{self as pb, Status};

use super::{Outcome, check_key};
use crate::kv::{KvService, Reply, error_response};

pub(super) fn run(svc: &KvService, g: pb::Get) -> Outcome {
    check_key(svc, &g.key)?;
    match svc.store.get(&g.key) {
        Some(item) => Ok(Reply::Found { id: 0, item }),
        None => Ok(error_response(0, Status::NotFound, "").into()),
    }
}
