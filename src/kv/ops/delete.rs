//! DELETE: removes a key, returning the version it had; with an expected
//! version, only if it matches (0 matches an absent key, which then answers
//! NOT_FOUND).

use ramkv_proto::{self as pb, Status, response::Result as Res};

use super::{Outcome, Reject, check_key, ok, version_mismatch};
use crate::kv::store::StoreError;
use crate::kv::{KvService, error_response};

pub(super) fn run(svc: &KvService, d: pb::Delete) -> Outcome {
    check_key(svc, &d.key)?;
    match svc.store.delete(&d.key, d.expected_version) {
        Ok(Some(version)) => ok(Res::Delete(pb::DeleteResult { version })),
        Ok(None) => Ok(error_response(0, Status::NotFound, "").into()),
        Err(StoreError::VersionMismatch { current }) => version_mismatch(
            d.expected_version,
            current,
            Res::Delete(pb::DeleteResult { version: current }),
        ),
        Err(e) => Err(Reject(Status::Internal, e.to_string())),
    }
}
