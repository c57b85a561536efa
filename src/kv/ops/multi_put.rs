//! MULTI_PUT: stores each entry in order, not atomically. Every key and value
//! is checked before any is stored; one bad entry refuses the whole request.
//! If the store fills up midway, the answer is OUT_OF_MEMORY with the
//! versions of the entries stored before it. Duplicate keys are stored in
//! turn: the last one stays, and each gets its own version.

use ramkv_proto::{self as pb, Response, Status, response::Result as Res};

use super::{Outcome, check_key, check_value, ok};
use crate::kv::KvService;

pub(super) fn run(svc: &KvService, m: pb::MultiPut) -> Outcome {
    for e in &m.entries {
        check_key(svc, &e.key)?;
        check_value(svc, &e.value)?;
    }
    let mut versions = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        match svc.store.put(&e.key, &e.value, None) {
            Ok(v) => versions.push(v),
            Err(err) => {
                return Ok(Response {
                    id: 0,
                    status: Status::OutOfMemory as i32,
                    message: format!(
                        "stored {} of {} entries, then: {err}",
                        versions.len(),
                        m.entries.len()
                    ),
                    result: Some(Res::MultiPut(pb::MultiPutResult { versions })),
                }
                .into());
            }
        }
    }
    ok(Res::MultiPut(pb::MultiPutResult { versions }))
}
