//! PUT: stores a value and returns its new version; with an expected version,
//! a compare-and-set.

use ramkv_proto::{self as pb, Status, response::Result as Res};

use super::{Outcome, Reject, check_key, check_value, ok, version_mismatch};
use crate::kv::KvService;
use crate::kv::store::StoreError;

pub(super) fn run(svc: &KvService, p: pb::Put) -> Outcome {
    check_key(svc, &p.key)?;
    check_value(svc, &p.value)?;
    match svc.store.put(&p.key, &p.value, p.expected_version) {
        Ok(version) => ok(Res::Put(pb::PutResult { version })),
        Err(StoreError::VersionMismatch { current }) => version_mismatch(
            p.expected_version,
            current,
            Res::Put(pb::PutResult { version: current }),
        ),
        Err(e @ StoreError::OutOfMemory { .. }) => Err(Reject(Status::OutOfMemory, e.to_string())),
    }
}
