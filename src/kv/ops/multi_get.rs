//! MULTI_GET: one item per key, in request order. Every key is checked
//! before any is read; one bad key refuses the whole request. A reply that
//! would not fit in one frame (`--max-frame`) is refused with TOO_LARGE;
//! the check counts the reply's exact encoded size.

use bytes::Bytes;
use ramkv_proto::{self as pb, Response, Status, response::Result as Res};

use super::{Outcome, Reject, check_key};
use crate::kv::KvService;

/// The frame header, the id, the status and the result's own tag and
/// length: what a reply adds to its items (an upper bound).
const ENVELOPE: usize = 4 + 11 + 2 + 1 + 10;

pub(super) fn run(svc: &KvService, m: pb::MultiGet) -> Outcome {
    for key in &m.keys {
        check_key(svc, key)?;
    }
    let limit = svc.opts.max_reply;
    let too_large = || {
        Reject(
            Status::TooLarge,
            format!(
                "reply would exceed the {limit}-byte frame limit (--max-frame); ask for fewer keys"
            ),
        )
    };
    let mut items = Vec::with_capacity(m.keys.len());
    let mut size = ENVELOPE;
    for key in &m.keys {
        let item = match svc.store.get(key) {
            // The value shared with the store, not copied: the handle holds
            // the item's block until the reply is encoded.
            Some(item) => pb::MultiGetItem {
                found: true,
                version: item.version(),
                value: Bytes::from_owner(item),
            },
            None => pb::MultiGetItem {
                found: false,
                value: Bytes::new(),
                version: 0,
            },
        };
        // The item as a field of the result: tag, length, body.
        size += prost::encoding::message::encoded_len(1, &item);
        if size > limit {
            return Err(too_large());
        }
        items.push(item);
    }
    let resp = Response {
        id: 0,
        status: Status::Ok as i32,
        message: String::new(),
        result: Some(Res::MultiGet(pb::MultiGetResult { items })),
    };
    // Exact, with the id the reply will carry at its widest.
    if ramkv_proto::frame_len(&resp) + 10 > limit {
        return Err(too_large());
    }
    Ok(resp.into())
}
